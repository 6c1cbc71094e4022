# cython: language_level=3
"""RFC 6455 opening handshake, server side (section 4.2); the accept key, which a client checks too."""
cimport cython

import base64
import binascii
import hashlib

import httptools

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
cdef bytes _GUID = WS_GUID.encode("ascii")


def ws_accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID))."""
    if isinstance(key, str):
        key = (<str>key).encode("latin-1")
    return base64.b64encode(hashlib.sha1(bytes(key) + _GUID).digest()).decode("ascii")


cdef dict _PHRASES = {
    101: "Switching Protocols",
    400: "Bad Request",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


cdef tuple _tokens(str value):
    # Comma-separated header tokens, trimmed and lower-cased.
    return tuple(t.strip().lower() for t in value.split(","))


cdef tuple _checked_headers(extra):
    # Caller-supplied headers go into the response verbatim; refuse anything that could split it.
    if extra is None:
        return ()
    items = extra.items() if isinstance(extra, dict) else extra
    result = []
    for name, value in items:
        name = str(name)
        value = str(value)
        if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid extra header {name!r}")
        result.append((name, value))
    return tuple(result)


@cython.final
cdef class _HeadSink:
    # httptools callbacks for one request head.
    cdef list url_parts
    cdef list header_list
    cdef bint headers_complete

    def __cinit__(self):
        self.url_parts = []
        self.header_list = []
        self.headers_complete = False

    def on_url(self, bytes url):
        self.url_parts.append(url)

    def on_header(self, bytes name, bytes value):
        self.header_list.append((name, value))

    def on_headers_complete(self):
        self.headers_complete = True


@cython.final
cdef class WebSocketHandshake:
    """Server side of the opening handshake (RFC 6455 section 4.2).

    Feed the bytes read from a new connection until feed() returns True; then write `response`.
    When `ok`, the connection speaks WebSocket from `leftover` on; otherwise `response` is an error
    answer (with `Connection: close`) and `status`/`error` say what was wrong. Bad input never
    raises. The request target is exposed (`path`, `query`, `url`) for the caller to route.

    Errors: 405 method not GET (with `Allow: GET`); 400 HTTP older than 1.1, Upgrade without the
    websocket token, Connection without the upgrade token, missing or invalid Sec-WebSocket-Key,
    a request body, or malformed HTTP; 426 no Upgrade header at all, or Sec-WebSocket-Version
    other than 13 (with `Sec-WebSocket-Version: 13`); 431 request head over max_header_bytes.

    extra_headers (dict or (name, value) pairs) are added to the 101 answer. subprotocols lists
    the Sec-WebSocket-Protocol values the server speaks, by preference; the first one the client
    also offers is chosen (`subprotocol`), else none is.
    """

    def __cinit__(self, Py_ssize_t max_header_bytes=8192, extra_headers=None, subprotocols=()):
        self.max_header_bytes = max_header_bytes
        self.complete = False
        self.ok = False
        self.status = 0
        self.error = None
        self.response = b""
        self.leftover = b""
        self.method = ""
        self.url = ""
        self.path = ""
        self.query = ""
        self.http_version = ""
        self.headers = {}
        self.subprotocol = None
        self._buf = bytearray()
        self._scan = 0
        self._extra_headers = _checked_headers(extra_headers)
        self._subprotocols = tuple(str(s) for s in subprotocols)

    def feed(self, data):
        """Add received bytes; True once the request head is complete (or rejected)."""
        cdef Py_ssize_t end, start
        if self.complete:
            # Past the head everything belongs to the next protocol.
            self.leftover += bytes(data)
            return True
        self._buf += data
        if self._scan == 0:
            # Tolerate blank lines before the request line (RFC 9112 section 2.2).
            start = 0
            while start < len(self._buf) and self._buf[start] in (13, 10):
                start += 1
            if start:
                del self._buf[:start]
        end = self._buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if len(self._buf) > self.max_header_bytes:
                self._buf = None
                self.complete = True
                self._reject(431, f"request head larger than {self.max_header_bytes} bytes")
                return True
            # Resume the search where a terminator could still start.
            self._scan = len(self._buf) - 3 if len(self._buf) > 3 else 0
            return False
        end += 4
        self.complete = True
        if end > self.max_header_bytes:
            self._buf = None
            self._reject(431, f"request head larger than {self.max_header_bytes} bytes")
            return True
        head = bytes(self._buf[:end])
        self.leftover = bytes(self._buf[end:])
        self._buf = None
        self._process(head)
        return True

    cdef _process(self, bytes head):
        cdef _HeadSink sink = _HeadSink()
        parser = httptools.HttpRequestParser(sink)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops at an upgrade; the head has been read
        except Exception:
            return self._reject(400, "malformed HTTP request")
        if not sink.headers_complete:
            return self._reject(400, "malformed HTTP request")
        try:
            self.method = parser.get_method().decode("latin-1")
            self.http_version = parser.get_http_version()
            self.url = b"".join(sink.url_parts).decode("latin-1")
            target = httptools.parse_url(b"".join(sink.url_parts))
        except Exception:
            return self._reject(400, "malformed request target")
        self.path = (target.path or b"").decode("latin-1")
        self.query = (target.query or b"").decode("latin-1")
        headers = {}
        for name, value in sink.header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").strip()
            # Repeated fields combine into one comma-separated value (RFC 9110 section 5.3).
            headers[key] = headers[key] + ", " + text if key in headers else text
        self.headers = headers
        self._validate()

    cdef _validate(self):
        headers = self.headers
        if self.method != "GET":
            return self._reject(405, f"method {self.method} not allowed, use GET",
                                (("Allow", "GET"),))
        try:
            major, minor = (int(x) for x in self.http_version.split("."))
        except ValueError:
            return self._reject(400, "malformed HTTP request")
        if (major, minor) < (1, 1):
            return self._reject(400, f"HTTP/{self.http_version} request, HTTP/1.1 required")
        upgrade = headers.get("upgrade")
        if upgrade is None:
            return self._reject(426, "missing Upgrade: websocket header",
                                (("Upgrade", "websocket"),))
        if "websocket" not in _tokens(upgrade):
            return self._reject(400, "Upgrade header does not name websocket")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            return self._reject(400, "Connection header lacks the upgrade token")
        key = headers.get("sec-websocket-key", "")
        try:
            valid_key = len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return self._reject(400, "missing or invalid Sec-WebSocket-Key")
        if headers.get("sec-websocket-version") != "13":
            return self._reject(426, "unsupported Sec-WebSocket-Version, 13 required",
                                (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")))
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            # Body bytes would otherwise be taken for WebSocket frames.
            return self._reject(400, "a WebSocket upgrade request must not have a body")
        self._accept(key)

    cdef _accept(self, str key):
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: " + ws_accept_key(key),
        ]
        if self._subprotocols and "sec-websocket-protocol" in self.headers:
            offered = {t.strip() for t in self.headers["sec-websocket-protocol"].split(",")}
            for proto in self._subprotocols:
                if proto in offered:
                    self.subprotocol = proto
                    lines.append("Sec-WebSocket-Protocol: " + proto)
                    break
        for name, value in self._extra_headers:
            lines.append(f"{name}: {value}")
        self.response = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.status = 101
        self.ok = True
        self.error = None

    cdef _reject(self, int status, str reason, tuple extra=()):
        body = (reason + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {status} {_PHRASES[status]}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        for name, value in extra:
            lines.append(f"{name}: {value}")
        self.response = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self.status = status
        self.ok = False
        self.error = reason
