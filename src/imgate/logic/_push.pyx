"""Logic's push by mid without a coroutine, compiled: the step every unicast of the embedded node takes.

A :class:`UnicastPath` is made by ``Logic`` for its cache and bus; ``Logic.push_mids_nowait`` is its
method. It keeps typed references to what the usual unicast (one user, one live connection) touches
down the chain logic -> bus -> router -> proxy, so that push costs no attribute lookups, no dict-held
counters and no generic calls:

- the cache's user map, when the cache is a ``MemoryCache`` (else ``user_sessions_nowait``);
- the router's proxies, when the bus is a ``MemoryBus`` (else the job goes to ``bus.publish_nowait``);
- the last proxy pushed to and its ``ConnsDelivery``, when that proxy keeps the stock
  ``push_conns_nowait`` (else the job goes to the bus, which calls the proxy's own method).

Anything else (several users or connections, an expired session, a proxy the router does not know)
takes the general path, ``bus.publish_nowait`` of logic's jobs, which owns every other case. Logic's
``pushes`` are counted here in C and added to ``Logic.counters`` when it is read (:meth:`settle`).
"""

from imgate.cache._memory cimport Session, clock_now
from imgate.protocol._job cimport conns_job

from imgate.cache.memory import MemoryCache
from imgate.proxy._delivery import push_conns_nowait as _stock_push_conns
from imgate.push.service import MemoryBus


cdef class UnicastPath:
    def __init__(self, logic, cache, bus):
        self.logic = logic
        self.cache = cache
        self.publish = bus.publish_nowait
        if type(cache) is MemoryCache:
            self.by_mid = cache._by_mid
            self.clock = cache._clock
        if type(bus) is MemoryBus:
            self.proxies = bus.router.proxies

    def settle(self, dict counters not None):
        """Add the pushes counted since the last call to ``counters`` (logic's)."""
        counters["pushes"] += self.pushes
        self.pushes = 0

    def push_mids_nowait(self, op, mids, body):
        """``Logic.push_mids`` without a coroutine (``pushes_wait`` is False): the same lookup and jobs,
        handed over at once. Returns the connections it was queued for."""
        if type(mids) is list and len(<list>mids) == 1:
            return self.push_mid(op, (<list>mids)[0], body)
        jobs = self.logic._jobs(op, body, self.logic._flat(self.cache.sessions_nowait(mids)))
        return self.logic._publish_nowait(jobs)

    cdef Py_ssize_t push_mid(self, object op, object mid, object body) except -1:
        cdef Session s
        cdef list conns
        cdef double now
        if self.by_mid is not None:
            conns = self.by_mid.get(mid)
            if conns is None:
                self.pushes += 1
                return 0
            if len(conns) == 1:  # the usual unicast: one user, one connection
                s = <Session?>conns[0]
                now = clock_now(self.clock)
                if s.expires_at > now:
                    self.pushes += 1
                    return self._to_conn(op, body, s.server, s.conn_id)
        live = self.cache.user_sessions_nowait(mid)  # sweeps out the expired
        if len(live) == 1:
            self.pushes += 1
            s = live[0]
            return self._to_conn(op, body, s.server, s.conn_id)
        return self.logic._publish_nowait(self.logic._jobs(op, body, live))

    cdef Py_ssize_t _to_conn(self, object op, object body, object server, object conn_id) except -1:
        """One connection's push: straight to its proxy's delivery when the chain is all in this
        process, else as a job through the bus."""
        if self.proxies is not None:
            proxy = self.proxies.get(server)
            if proxy is not None:
                if proxy is not self.proxy:
                    self.proxy = proxy
                    self.delivery = _delivery_of(proxy)
                if self.delivery is not None:
                    return self.delivery.push_one(conn_id, op, body)
        return self.publish(conns_job(op, body, server, [conn_id]))


cdef ConnsDelivery _delivery_of(object proxy):
    """The proxy's ConnsDelivery when its ``push_conns_nowait`` is the stock one, else None."""
    d = getattr(proxy, "conns_delivery", None)
    if not isinstance(d, ConnsDelivery):
        return None
    if getattr(type(proxy), "push_conns_nowait", None) is not _stock_push_conns:
        return None
    if "push_conns_nowait" in getattr(proxy, "__dict__", ()):
        return None
    return <ConnsDelivery>d
