"""A reply of imgate.http: :class:`Response`, what a handler returns, and its bytes on the wire.

The common reply (2xx on a keep-alive HTTP/1.1 connection, no extra headers: a push's) is encoded
from a cached head up to ``Content-Length`` in one allocation; every other one line by line. Response
is compiled so that the connection reads its fields from the struct (each slot of a Python class was
a generic attribute lookup, four per reply).
"""

import json

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from http import HTTPStatus


cdef class Response:
    """An HTTP response; ``headers`` are extra headers (Content-Type/Length are set by the server)."""

    def __init__(self, status=200, body=b"", content_type="application/octet-stream", headers=None):
        self.status = int(status)
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.content_type = content_type
        self.headers = dict(headers) if headers else {}

    def json(self):
        """The body decoded as JSON (handy in tests)."""
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.content_type} {len(self.body)}B>"


cdef dict _HEAD_CACHE = {}


# the common reply's head encoded last, found again without a key tuple while replies repeat
cdef int _last_status = -1
cdef object _last_type = None
cdef bytes _last_prefix = None


cdef void _remember(int status, object content_type, bytes prefix):
    global _last_status, _last_type, _last_prefix
    _last_status, _last_type, _last_prefix = status, content_type, prefix


cdef str _reason(int status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


cdef bytes _join_reply(bytes prefix, bytes body):
    """``prefix + b"%d\\r\\n\\r\\n" % len(body) + body`` in one allocation."""
    cdef char digits[24]
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(body), np = PyBytes_GET_SIZE(prefix), nd = 0, v = nb, k
    while True:
        digits[nd] = <char>(48 + v % 10)   # ASCII digit, least significant first
        nd += 1
        v //= 10
        if v == 0:
            break
    cdef bytes out = PyBytes_FromStringAndSize(NULL, np + nd + 4 + nb)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, PyBytes_AS_STRING(prefix), np)
    o += np
    for k in range(nd):
        o[k] = digits[nd - 1 - k]
    o += nd
    memcpy(o, b"\r\n\r\n", 4)
    memcpy(o + 4, PyBytes_AS_STRING(body), nb)
    return out


cpdef bytes encode_response(Response resp, bint keep_alive, bint head_only, bint http10):
    """``resp`` as bytes on the wire: status line, headers, body."""
    cdef int status = resp.status
    cdef bytes body = resp.body
    cdef dict headers = resp.headers
    cdef bytes prefix
    if not headers and keep_alive and not http10 and not head_only and 200 <= status < 300 and status != 204:
        # the common reply (a push's): a cached head up to Content-Length
        content_type = resp.content_type
        if status == _last_status and content_type is _last_type:  # the reply made last: no key tuple
            return _join_reply(_last_prefix, body)
        key = (status, content_type)
        prefix = _HEAD_CACHE.get(key)
        if prefix is None:
            prefix = (f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: "
                      f"{content_type}\r\nContent-Length: ").encode("latin-1")
            _HEAD_CACHE[key] = prefix
        if type(content_type) is str:
            _remember(status, content_type, prefix)
        return _join_reply(prefix, body)
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    no_body = status < 200 or status in (204, 304)
    if not no_body:
        lines.append(f"Content-Type: {resp.content_type}")
        lines.append(f"Content-Length: {len(body)}")
    for k, v in headers.items():
        if k.lower() in ("content-length", "connection", "transfer-encoding"):
            continue
        lines.append(f"{k}: {v}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or no_body:
        return head
    return head + body
