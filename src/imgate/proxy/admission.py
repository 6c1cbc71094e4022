"""Reconnect-storm admission: each proxy lets at most ``max_auths_per_second`` auths through to logic.

When a proxy dies, all its clients come back at once; without a bound each live proxy would hand
logic and the cache as many auths as arrive. A token bucket (refilled at the rate, holding one
second's worth) admits auths; the others are answered op 6 ``{"reason": "busy", "reconnect": true,
"retry_ms": N}`` and closed. ``retry_ms`` is a place in line: the proxy keeps an estimate of the
clients it turned away that have not come back yet (it drains at the rate), so the n-th refused
client is told about n / rate seconds, jittered, and the returning clients arrive spread at about
the rate instead of all together again.
"""

from __future__ import annotations

import random
import time

MAX_RETRY_MS = 60_000  # a line longer than this is answered with this (clients back off further)


class Admission:
    def __init__(self, rate: float, clock=time.monotonic, rng: random.Random | None = None):
        self.rate = float(rate)  # 0: no limit
        self.clock = clock
        self.rng = rng or random.Random()
        self._tokens = self.rate
        self._line = 0.0  # refused clients expected back, not yet served
        self._t = clock()
        self.admitted = 0
        self.refused = 0

    def _advance(self) -> None:
        now = self.clock()
        dt = now - self._t
        self._t = now
        if dt > 0:
            self._tokens = min(self.rate, self._tokens + dt * self.rate)
            self._line = max(0.0, self._line - dt * self.rate)

    def admit(self) -> bool:
        """One auth may go to logic now."""
        if self.rate <= 0:
            return True
        self._advance()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.admitted += 1
            return True
        self.refused += 1
        return False

    def retry_ms(self) -> int:
        """For a client just refused: when to come back, in ms (its place in line, jittered)."""
        self._advance()
        self._line += 1.0
        wait = self._line / self.rate * self.rng.uniform(0.9, 1.2) + self.rng.uniform(0.0, 0.05)
        return min(MAX_RETRY_MS, int(wait * 1000) + 1)
