# The public Cython contract of imgate.core: `cimport imgate.core` (or `from imgate.core cimport ...`)
# gives the C-level pieces of the compiled hot path. Compile with include_dirs=[imgate.get_include()].
from imgate._core.frame cimport Frame, FrameDecoder, frame_pack, frame_write_header
from imgate._core.room cimport RoomTable
from imgate._core.websocket cimport WebSocketParser, ws_encode, ws_header_size, ws_write_header
