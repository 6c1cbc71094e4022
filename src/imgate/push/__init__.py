"""The push service: delivers push jobs to the proxies that hold their targets (seed: pushService / job)."""

from imgate.protocol import PushJob
from imgate.push.service import Bus, BusUnavailable, MemoryBus, ProxyAPI, Push

__all__ = ["PushJob", "Bus", "BusUnavailable", "MemoryBus", "ProxyAPI", "Push"]
