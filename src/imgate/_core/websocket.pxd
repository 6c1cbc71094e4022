# Public Cython contract of the RFC 6455 codec. The code is split by concern into ws_encoder.pyx,
# ws_parser.pyx and ws_handshake.pyx (each with its .pxd, which says what every piece does); this
# file names what other Cython modules may `cimport` from here:
#   from imgate._core.websocket cimport ws_header_size, ws_write_header, ws_encode, WebSocketParser
# The cdef functions travel through Cython's C-API capsule, so callers pay a C call, not a Python
# one. The opcode constants for C code live in includes/ws.pxd (IMGATE_WS_OP_*).
from imgate._core.ws_encoder cimport ws_encode, ws_encode_masked, ws_header_size, ws_write_header
from imgate._core.ws_handshake cimport WebSocketHandshake
from imgate._core.ws_parser cimport WebSocketParser
