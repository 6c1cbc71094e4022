"""Build the Cython/C extensions of imgate.

Release builds by default; IMGATE_DEBUG=1 compiles the debug checks in (see src/imgate/_core/includes/imgate_debug.h).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("IMGATE_DEBUG", "0") not in ("", "0")
# IMGATE_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer (`make test-asan`, which builds in a
# copy of the tree and runs the tests with the sanitizer runtimes preloaded).
# IMGATE_SANITIZE=fuzz: the same sanitizers plus libFuzzer's coverage counters, compiled by clang
# (`make fuzz`, which builds in its own copy and preloads atheris's ASan+libFuzzer runtime), so that the
# fuzzer sees the branches taken inside the extensions.
SANITIZE = os.environ.get("IMGATE_SANITIZE", "0").strip().lower()
SANITIZE = "" if SANITIZE in ("", "0") else SANITIZE
if SANITIZE == "fuzz":
    # gcc has no -fsanitize=fuzzer-no-link; the interpreter's own LDSHARED names gcc, so both are replaced
    os.environ.setdefault("CC", "clang")
    os.environ.setdefault("LDSHARED", "clang -shared")

macros = [("IMGATE_DEBUG", "1" if DEBUG else "0")]
cflags = ["-O0", "-g"] if DEBUG else ["-O3"]
sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
if SANITIZE:
    cflags = ["-O1", "-g"] + sanitize
if SANITIZE == "fuzz":
    cflags = cflags + ["-fsanitize=fuzzer-no-link"]
common = dict(
    include_dirs=["src/imgate/_core/includes"],  # the headers ship beside the .pxd that extern them
    define_macros=macros,
    extra_compile_args=cflags + ["-std=c11", "-Wno-unused-function"],
    extra_link_args=sanitize if SANITIZE else [],
)

extensions = [
    Extension("imgate._core.frame", ["src/imgate/_core/frame.pyx"], **common),
    # the WebSocket codec by concern (the parser and the encoder both need the C helpers), and the
    # module that gathers it under one name
    Extension("imgate._core.ws_encoder", ["src/imgate/_core/ws_encoder.pyx", "csrc/imgate_ws.c"], **common),
    Extension("imgate._core.ws_parser", ["src/imgate/_core/ws_parser.pyx", "csrc/imgate_ws.c"], **common),
    Extension("imgate._core.ws_handshake", ["src/imgate/_core/ws_handshake.pyx"], **common),
    Extension("imgate._core.websocket", ["src/imgate/_core/websocket.pyx"], **common),
    Extension("imgate._core.output", ["src/imgate/_core/output.pyx"], **common),
    Extension("imgate._core.room", ["src/imgate/_core/room.pyx"], **common),
    # the HTTP API: the request, its reply on the wire, the plain parser, the dispatcher, httptools'
    # callbacks, the connection and the API-key guard
    Extension("imgate.http._request", ["src/imgate/http/_request.pyx"], **common),
    Extension("imgate.http._reply", ["src/imgate/http/_reply.pyx"], **common),
    Extension("imgate.http._plain", ["src/imgate/http/_plain.pyx"], **common),
    Extension("imgate.http._dispatch", ["src/imgate/http/_dispatch.pyx"], **common),
    Extension("imgate.http._httptools", ["src/imgate/http/_httptools.pyx"], **common),
    Extension("imgate.http._protocol", ["src/imgate/http/_protocol.pyx"], **common),
    Extension("imgate.http._guard", ["src/imgate/http/_guard.pyx"], **common),
    # the auth body of the common case (op 7), parsed without the json module
    Extension("imgate.auth._body", ["src/imgate/auth/_body.pyx"], **common),
    # the embedded node's push by mid: its route, then one compiled step behind each interface it
    # crosses (logic, the cache, the push router, the proxy's delivery)
    Extension("imgate.logic._push_routes", ["src/imgate/logic/_push_routes.pyx"], **common),
    Extension("imgate.protocol._job", ["src/imgate/protocol/_job.pyx"], **common),
    Extension("imgate.logic._push", ["src/imgate/logic/_push.pyx"], **common),
    Extension("imgate.cache._memory", ["src/imgate/cache/_memory.pyx"], **common),
    Extension("imgate.push._route", ["src/imgate/push/_route.pyx"], **common),
    Extension("imgate.proxy._delivery", ["src/imgate/proxy/_delivery.pyx"], **common),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        include_path=["src"],
    ),
)
