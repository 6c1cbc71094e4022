"""Operation numbers of the client protocol (goim v2): 0-17 are goim's, 18-99 imgate's extensions,
push operations chosen by the business are >= 1000."""

from imgate._core.frame import (  # noqa: F401  (the numbers are defined once, in the compiled core)
    OP_AUTH, OP_AUTH_REPLY, OP_CHANGE_ROOM, OP_CHANGE_ROOM_REPLY, OP_DISCONNECT_REPLY,
    OP_HANDSHAKE, OP_HANDSHAKE_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY, OP_JOIN_ROOM,
    OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM, OP_LEAVE_ROOM_REPLY, OP_PROTO_FINISH, OP_PROTO_READY,
    OP_RAW, OP_SEND_MSG, OP_SEND_MSG_REPLY, OP_SUB, OP_SUB_REPLY, OP_UNSUB, OP_UNSUB_REPLY,
)

# imgate's IM operations (docs/im.md "Wire protocol")
OP_MSG_SEND = 22
OP_MSG_SEND_REPLY = 23
OP_MSG_PUSH = 24
OP_MSG_ACK = 25
OP_SYNC = 26
OP_SYNC_REPLY = 27
OP_GROUP_PULL = 28
OP_GROUP_PULL_REPLY = 29
OP_GROUP_ACK = 30
OP_READ = 32
OP_READ_REPLY = 33

# IM request op -> the op of its reply. A good MSG_ACK gets no reply; a bad one gets a SYNC_REPLY
# carrying the error (the only answer an ack can have); GROUP_ACK likewise with a GROUP_PULL_REPLY.
IM_REPLY_OP = {OP_MSG_SEND: OP_MSG_SEND_REPLY, OP_MSG_ACK: OP_SYNC_REPLY, OP_SYNC: OP_SYNC_REPLY, OP_READ: OP_READ_REPLY,
               OP_GROUP_PULL: OP_GROUP_PULL_REPLY, OP_GROUP_ACK: OP_GROUP_PULL_REPLY}
IM_OPS = frozenset(IM_REPLY_OP)
