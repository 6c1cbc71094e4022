"""The IM service: single chat, offline messages, per-user sequences, sync, acks (docs/im.md).

``store`` is the storage contract, ``sqlite`` its embedded implementation, ``service`` the protocol
handler behind the proxy and the HTTP API, ``protocol`` the wire contract. docs/im.md has the design.
"""

from imgate.im.protocol import ImError
from imgate.im.store import MessageStore, NewMessage, Stored, SyncPage

__all__ = ["ImError", "MessageStore", "NewMessage", "Stored", "SyncPage"]
