"""Operation numbers of the client protocol (goim v2): 0-17 are goim's, 18-99 imgate's extensions,
push operations chosen by the business are >= 1000."""

from imgate._core.frame import (  # noqa: F401  (the numbers are defined once, in the compiled core)
    OP_AUTH, OP_AUTH_REPLY, OP_CHANGE_ROOM, OP_CHANGE_ROOM_REPLY, OP_DISCONNECT_REPLY,
    OP_HANDSHAKE, OP_HANDSHAKE_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY, OP_JOIN_ROOM,
    OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM, OP_LEAVE_ROOM_REPLY, OP_PROTO_FINISH, OP_PROTO_READY,
    OP_RAW, OP_SEND_MSG, OP_SEND_MSG_REPLY, OP_SUB, OP_SUB_REPLY, OP_UNSUB, OP_UNSUB_REPLY,
)
