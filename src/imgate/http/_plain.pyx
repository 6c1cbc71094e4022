"""The plain-request parser of imgate.http: the requests programs send, parsed without httptools.

Plain: ``GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS /target HTTP/1.1``, the target printable ASCII
without ``%`` or ``#``; header names of token characters, values printable ASCII (or tab); at most
one Content-Length (digits, within ``max_body``); no Transfer-Encoding, Expect or Upgrade, Connection
only ``keep-alive``; the head within ``max_header_bytes``; the body all here. Every other request,
and every error, is httptools' (the connection, ``_protocol.pyx``, hands it the bytes from the first
one that is not plain), so this parser only ever says yes or "not mine".
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy
from libc.string cimport memcmp

from imgate.http._request cimport Request


cdef inline bint _target_char(unsigned char c):
    # what a plain target may hold: printable ASCII but '%' (an escape to decode) and '#'
    return 0x20 < c < 0x7f and c != b'%' and c != b'#'


cdef bint plain_target(bytes url):
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(url)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(url)
    if n == 0 or p[0] != b'/':
        return False
    for i in range(n):
        if not _target_char(p[i]):
            return False
    return True


cdef str _M_GET = "GET", _M_HEAD = "HEAD", _M_POST = "POST", _M_PUT = "PUT"
cdef str _M_DELETE = "DELETE", _M_PATCH = "PATCH", _M_OPTIONS = "OPTIONS"


cdef str _plain_method(const unsigned char* m, Py_ssize_t n):
    """The method's interned name, None for one the fast path leaves to httptools."""
    if n == 3 and memcmp(m, b"GET", 3) == 0:
        return _M_GET
    if n == 4 and memcmp(m, b"POST", 4) == 0:
        return _M_POST
    if n == 4 and memcmp(m, b"HEAD", 4) == 0:
        return _M_HEAD
    if n == 3 and memcmp(m, b"PUT", 3) == 0:
        return _M_PUT
    if n == 6 and memcmp(m, b"DELETE", 6) == 0:
        return _M_DELETE
    if n == 5 and memcmp(m, b"PATCH", 5) == 0:
        return _M_PATCH
    if n == 7 and memcmp(m, b"OPTIONS", 7) == 0:
        return _M_OPTIONS
    return None


cdef inline bint _is_tchar(unsigned char c):
    # RFC 9110 token characters
    if b'a' <= c <= b'z' or b'A' <= c <= b'Z' or b'0' <= c <= b'9':
        return True
    return c in b"!#$%&'*+-.^_`|~"


cdef dict _LOWER_CACHE = {}
# the names nearly every request carries: found without making a bytes object to look them up
cdef str _H_HOST = "host", _H_AUTH = "authorization", _H_CLEN = "content-length", _H_CTYPE = "content-type"


cdef inline bint _is_name(const unsigned char* s, Py_ssize_t n, const char* lower, Py_ssize_t m):
    """``s[:n]`` is ``lower`` in any case (``lower``: lower-case letters and '-')."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if (s[i] | 0x20 if b'A' <= s[i] <= b'Z' else s[i]) != <unsigned char>lower[i]:
            return False
    return True


cdef str _lower_ascii(const unsigned char* s, Py_ssize_t n):
    """A header name in lower case; the names a client repeats on every request are made once."""
    if _is_name(s, n, "host", 4):
        return _H_HOST
    if _is_name(s, n, "content-length", 14):
        return _H_CLEN
    if _is_name(s, n, "authorization", 13):
        return _H_AUTH
    if _is_name(s, n, "content-type", 12):
        return _H_CTYPE
    cdef bytes raw = (<const char*>s)[:n]
    cdef object hit = _LOWER_CACHE.get(raw)
    if hit is not None:
        return <str>hit
    name = raw.decode("latin-1").lower()
    if len(_LOWER_CACHE) < 256:
        _LOWER_CACHE[raw] = name
    return name


# A path or header block longer than this is parsed every time rather than kept (a pusher's head is
# ~100 bytes): what a connection keeps stays small.
DEF MEMO_MAX = 1024


@cython.final
cdef class PlainMemo:
    """One connection's last plain request, as parsed: a program sends the same path and header block
    over and over (a pusher: the same Host, key and length), and the next request that repeats them
    byte for byte takes their parsed form instead of being parsed again. Its header strings are the
    same objects each time, so their hashes are kept: the guard's key lookup and the dispatcher's route
    lookup hash nothing. Only what parsed cleanly is kept; each request gets its own headers dict."""

    def __cinit__(self):
        self.path_raw = None
        self.path = None
        self.head = None
        self.headers = None
        self.clen = 0


cdef enum:
    _K_OTHER, _K_CLEN, _K_REFUSED, _K_CONNECTION


cdef int _name_kind(const unsigned char* s, Py_ssize_t n):
    """What a header name means to the plain path: its length, then a byte compare (no str made)."""
    if n == 14 and _is_name(s, n, "content-length", 14):
        return _K_CLEN
    if n == 10 and _is_name(s, n, "connection", 10):
        return _K_CONNECTION
    if ((n == 17 and _is_name(s, n, "transfer-encoding", 17)) or (n == 6 and _is_name(s, n, "expect", 6))
            or (n == 7 and _is_name(s, n, "upgrade", 7))):
        return _K_REFUSED                       # a body in chunks, 100-continue, a protocol switch
    return _K_OTHER


cdef Py_ssize_t _parse_fields(const unsigned char* p, Py_ssize_t i, Py_ssize_t limit, Py_ssize_t max_body,
                              dict headers, Py_ssize_t* clen_out) except -2:
    """The header fields from ``p[i]`` up to the empty line, into ``headers``: the end of the head,
    or -1 when it is not plain (or not all here)."""
    cdef Py_ssize_t k, name0, name1, val0, val1, clen = -1
    cdef unsigned char c
    cdef int kind
    cdef str key, val, prev
    while True:
        if i + 1 >= limit:
            return -1                           # not all here, or too big: httptools decides
        if p[i] == b'\r':
            if p[i + 1] != b'\n':
                return -1
            clen_out[0] = clen if clen >= 0 else 0
            return i + 2
        name0 = i
        while i < limit and _is_tchar(p[i]):
            i += 1
        name1 = i
        if name1 == name0 or i >= limit or p[i] != b':':
            return -1
        i += 1
        while i < limit and (p[i] == b' ' or p[i] == b'\t'):
            i += 1
        val0 = i
        while i < limit:
            c = p[i]
            if c == b'\r':
                break
            if (c < 0x20 and c != b'\t') or c >= 0x7f:
                return -1
            i += 1
        if i + 1 >= limit or p[i + 1] != b'\n':
            return -1
        val1 = i                                # trailing blanks kept, as httptools keeps them
        i += 2
        kind = _name_kind(p + name0, name1 - name0)
        if kind == _K_CLEN:
            if clen >= 0 or val1 == val0 or val1 - val0 > 18:
                return -1
            clen = 0
            for k in range(val0, val1):
                if not (b'0' <= p[k] <= b'9'):
                    return -1
                clen = clen * 10 + (p[k] - 48)   # ASCII digit
            if clen > max_body:
                return -1
        elif kind == _K_REFUSED:
            return -1
        key = _lower_ascii(p + name0, name1 - name0)
        val = (<const char*>p)[val0:val1].decode("latin-1")
        if kind == _K_CONNECTION and val.lower() != "keep-alive":
            return -1
        prev = headers.get(key)
        headers[key] = val if prev is None else f"{prev}, {val}"


cdef Request parse_plain(const unsigned char* p, Py_ssize_t n, Py_ssize_t start,
                         Py_ssize_t max_header_bytes, Py_ssize_t max_body, Py_ssize_t* end,
                         PlainMemo memo):
    cdef Py_ssize_t i = start, head0, head_end, hl, path_end
    cdef Py_ssize_t limit = start + max_header_bytes
    cdef Py_ssize_t clen = 0, method_len, target0, target1, q = -1
    cdef unsigned char c
    cdef dict headers
    cdef str path
    cdef Request req
    if limit > n:
        limit = n
    # request line: METHOD SP target SP HTTP/1.1 CRLF
    while i < limit and b'A' <= p[i] <= b'Z':
        i += 1
    method_len = i - start
    if method_len < 3 or method_len > 7 or i >= limit or p[i] != b' ':
        return None
    method = _plain_method(p + start, method_len)
    if method is None:
        return None
    i += 1
    target0 = i
    if i >= limit or p[i] != b'/':
        return None
    while i < limit:
        c = p[i]
        if c == b' ':
            break
        if not _target_char(c):
            return None
        if c == b'?' and q < 0:
            q = i
        i += 1
    target1 = i
    if i + 11 > limit or memcmp(p + i, b" HTTP/1.1\r\n", 11) != 0:
        return None
    i += 11
    # header fields, up to the empty line: the last request's, or parsed
    head0 = i
    hl = PyBytes_GET_SIZE(memo.head) if memo is not None and memo.head is not None else -1
    if hl >= 0 and head0 + hl <= limit and memcmp(p + head0, PyBytes_AS_STRING(memo.head), hl) == 0:
        # the same bytes parsed cleanly last time, and they fit this request's limit too
        head_end = head0 + hl
        clen = memo.clen
        if head_end + clen > n:
            return None                         # the body is still on its way
        headers = PyDict_Copy(memo.headers)
    else:
        headers = {}
        head_end = _parse_fields(p, head0, limit, max_body, headers, &clen)
        if head_end < 0 or head_end + clen > n:
            return None                         # not plain, or the body is still on its way
        if memo is not None and head_end - head0 <= MEMO_MAX:
            memo.head = (<const char*>p)[head0:head_end]
            memo.headers = PyDict_Copy(headers)
            memo.clen = clen
    req = Request.__new__(Request)
    req.method = method
    path_end = target1 if q < 0 else q
    if (memo is not None and memo.path_raw is not None and PyBytes_GET_SIZE(memo.path_raw) == path_end - target0
            and memcmp(p + target0, PyBytes_AS_STRING(memo.path_raw), path_end - target0) == 0):
        path = memo.path
    else:
        path = (<const char*>p)[target0:path_end].decode("ascii")
        if memo is not None and path_end - target0 <= MEMO_MAX:
            memo.path_raw = (<const char*>p)[target0:path_end]
            memo.path = path
    req.path = path
    req.query_string = "" if q < 0 else (<const char*>p)[q + 1:target1].decode("ascii")
    req.headers = headers
    req.body = (<const char*>p)[head_end:head_end + clen] if clen else b""
    req.version = "1.1"
    req.keep_alive = True
    end[0] = head_end + clen
    return req
