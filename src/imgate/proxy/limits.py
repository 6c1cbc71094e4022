"""What one client may cost the proxy: client ops per second per connection (a token bucket) and
connections per client address. Both refuse with a clear op-6 notice and are counted in ``/metrics``.

The bucket lives on the connection's ``Channel`` as two floats (``tokens``, ``refilled``), refilled
lazily when frames arrive, so an idle connection costs nothing and no timer runs.
"""

from __future__ import annotations

import ipaddress

RATE_LIMITED = "rate limited"
TOO_MANY_CONNECTIONS = "too many connections from this address"


class Limits:
    """``op_rate`` frames per second with bursts of ``op_burst`` (0 = no limit); ``max_conns_per_ip``
    connections per client address (0 = no limit), not counting the addresses in ``exempt``."""

    def __init__(self, op_rate: float, op_burst: float, max_conns_per_ip: int, exempt=()):
        self.op_rate = float(op_rate)
        self.op_burst = float(op_burst)
        self.max_conns_per_ip = int(max_conns_per_ip)
        self.exempt = [ipaddress.ip_network(x, strict=False) for x in exempt]
        self._exempt_seen: dict[str, bool] = {}   # address -> exempt?, so it is parsed once

    @classmethod
    def from_config(cls, config) -> "Limits":
        return cls(config.client_op_rate, config.client_op_burst, config.max_conns_per_ip,
                   config.conn_limit_exempt)

    def start(self, ch, now: float) -> None:
        """A connection opens with a full bucket."""
        ch.tokens = self.op_burst
        ch.refilled = now

    def take(self, ch, frames: int, now: float) -> bool:
        """Spend one token per frame; False once the connection has gone past its burst."""
        if self.op_rate <= 0:
            return True
        tokens = ch.tokens + (now - ch.refilled) * self.op_rate
        if tokens > self.op_burst:
            tokens = self.op_burst
        ch.refilled = now
        ch.tokens = tokens - frames
        return ch.tokens >= 0

    def admit(self, ip: str, open_from_ip: int) -> bool:
        """May one more connection from ``ip`` (which has ``open_from_ip`` open) be accepted?"""
        if self.max_conns_per_ip <= 0 or open_from_ip < self.max_conns_per_ip:
            return True
        exempt = self._exempt_seen.get(ip)
        if exempt is None:
            try:
                addr = ipaddress.ip_address(ip)
                exempt = any(addr in net for net in self.exempt)
            except ValueError:  # not an IP address (a UNIX socket): nothing to count by
                exempt = True
            if len(self._exempt_seen) < 65536:
                self._exempt_seen[ip] = exempt
        return exempt
