"""The edge proxy (goim's comet). ``Proxy`` is the whole of it; ``LogicAPI`` is what it needs from logic."""

from imgate.protocol import notice
from imgate.proxy.channel import Channel, valid_room_id
from imgate.protocol.interfaces import LogicAPI
from imgate.proxy.server import Proxy

__all__ = ["Channel", "LogicAPI", "Proxy", "notice", "valid_room_id"]
