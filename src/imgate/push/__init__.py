"""The push service: delivers push jobs to the proxies that hold their targets (goim's job)."""

from imgate.protocol import PushJob
from imgate.protocol.interfaces import ProxyAPI
from imgate.push.router import PushRouter
from imgate.push.service import Bus, BusUnavailable, MemoryBus

__all__ = ["PushJob", "Bus", "BusUnavailable", "MemoryBus", "ProxyAPI", "PushRouter"]
