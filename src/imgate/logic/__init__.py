"""The logic service: auth, heartbeat, online/offline, rooms, push API, online queries."""

from imgate.logic.service import Connected, Logic

__all__ = ["Connected", "Logic"]
