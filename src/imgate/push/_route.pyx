"""The push router's step for one job in this process, compiled: the embedded node's every push goes
through it. ``PushRouter`` binds it as its ``route_nowait`` method."""

from imgate.protocol._job cimport PushJob

from imgate.protocol import KIND_CONNS


def route_nowait(self, PushJob job not None):
    """Deliver one job to proxies in this process; returns the connections it was queued for."""
    if job.kind == KIND_CONNS:  # the usual unicast: one call to one proxy, no plan to make
        proxy = (<dict?>self.proxies).get(job.server)
        if proxy is None:
            self._unknown(job)
            return 0
        # through the interface: a proxy (or a test's subclass) may implement it its own way
        return proxy.push_conns_nowait(job.conn_ids, job.op, job.body)
    n = 0
    for sid, calls in self.plan([job]).items():
        proxy = self.proxies[sid]
        for (_, at_once), args in calls:
            n += getattr(proxy, at_once)(*args)
    return n
