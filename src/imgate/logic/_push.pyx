"""Logic's push by mid for a node whose cache and bus are in this process, compiled: the step every
unicast of the embedded node takes. ``Logic`` binds it as its ``push_mids_nowait`` method."""

from imgate.protocol._job cimport conns_job


def push_mids_nowait(self, op, mids, body):
    """:meth:`Logic.push_mids` without a coroutine (``pushes_wait`` is False): the same lookup and jobs,
    handed to the bus at once. Returns the connections it was queued for."""
    if len(mids) == 1:  # the usual unicast: one user, most often one connection
        live = self.cache.user_sessions_nowait(mids[0])
        if len(live) == 1:
            self.counters["pushes"] += 1
            s = live[0]
            return self.bus.publish_nowait(conns_job(op, body, s.server, [s.conn_id]))
        jobs = self._jobs(op, body, live)
    else:
        found = self.cache.sessions_nowait(mids)
        jobs = self._jobs(op, body, self._flat(found))
    return self._publish_nowait(jobs)
