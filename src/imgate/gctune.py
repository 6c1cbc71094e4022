"""Garbage-collector settings for a long-running imgate process (``imgate serve`` and the roles).

A gateway holds many long-lived objects (per connection: its socket, channel, decoder, session...).
CPython collects the young generation each time the number of tracked objects grows by 700, which in
a gateway means during connection storms: a pause every few dozen new connections, and full
collections that traverse every object of every connection (tens of ms at 10,000 connections), each
landing on the messages in flight. So, once the process is up:

- everything allocated during start-up (modules, classes, config, listeners) is frozen
  (``gc.freeze``): no collection traverses it again;
- the youngest generation is collected every ``GEN0`` new objects instead of 700: far fewer pauses
  while connections arrive, each still short (a young collection traverses the young objects only).
  Steady traffic does not trigger collections either way: what a message allocates is freed by
  reference counting before the count moves.

Reference counting frees almost everything here; the cyclic collector stays on for the rare cycle.
Library users embedding a :class:`~imgate.node.Node` keep their own settings: only the command line
calls :func:`settle`.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0", "settle"]

GEN0 = 20_000


def settle() -> None:
    """Collect once, freeze what start-up allocated, and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0, gen1, gen2)
