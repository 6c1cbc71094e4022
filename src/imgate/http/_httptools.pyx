"""The httptools half of an imgate.http connection: the callbacks httptools (llhttp) makes while it
parses, collecting one request at a time without interpreted code.

The connection (``_protocol.pyx``) extends :class:`HttptoolsCallbacks`, feeds the parser and takes
every request that is not plain (``_plain.pyx`` takes those). A whole request goes to its
``_received``; a limit or a malformed target to its ``_fail``, which stops the parser.
"""

from urllib.parse import unquote

import httptools

from imgate.http._plain cimport plain_target
from imgate.http._request cimport Request

cdef object _HttpParserInvalidURLError = httptools.HttpParserInvalidURLError
cdef object _parse_url = httptools.parse_url


cdef class HttptoolsCallbacks:
    """The parser's callbacks and the message being parsed; the connection is the subclass."""

    cdef void _reset_message(self):
        self._url = None
        self._headers = {}
        self._body = []
        self._body_len = 0
        self._in_head = False
        self._head_bytes = 0
        self._head_chunk_bytes = 0
        self._keep_alive = True

    cdef void _check_head_size(self, bint raise_) except *:
        cdef Py_ssize_t limit = self.max_header_bytes
        if self._head_bytes > limit or self._head_chunk_bytes > limit:
            self._fail(431, f"request header section exceeds {limit} bytes", raise_)

    # -- httptools callbacks

    def on_message_begin(self):
        self._messages_begun += 1
        self._reset_message()
        self._in_head = True

    def on_url(self, bytes url):
        self._url = url if self._url is None else self._url + url
        self._head_bytes += len(url)
        self._check_head_size(True)

    def on_header(self, bytes name, bytes value):
        self._head_bytes += len(name) + len(value) + 4
        self._check_head_size(True)
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = val if prev is None else f"{prev}, {val}"

    def on_headers_complete(self):
        self._in_head = False
        self._keep_alive = self.parser.should_keep_alive()
        cl = self._headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                self._fail(400, "malformed HTTP request", True)
            if n > self.max_body:
                self._fail(413, f"request body exceeds {self.max_body} bytes", True)
        expect = self._headers.get("expect")
        if expect is not None and expect.lower() == "100-continue":
            self._continue()

    def on_body(self, bytes body):
        self._body_len += len(body)
        if self._body_len > self.max_body:
            self._fail(413, f"request body exceeds {self.max_body} bytes", True)
        self._body.append(body)

    def on_message_complete(self):
        cdef bytes url = self._url if self._url is not None else b""
        cdef str path, query
        cdef Request req
        if plain_target(url):
            # "/path?query" of printable ASCII without escapes: split here, no URL parser needed
            q = url.find(b"?")
            if q < 0:
                path = url.decode("ascii")
                query = ""
            else:
                path = url[:q].decode("ascii")
                query = url[q + 1:].decode("ascii")
        else:
            try:
                parsed = _parse_url(url)
            except _HttpParserInvalidURLError:
                self._fail(400, f"malformed request target {url[:200].decode('latin-1')!r}", True)
            path = unquote((parsed.path or b"/").decode("latin-1"), encoding="utf-8", errors="replace")
            query = (parsed.query or b"").decode("latin-1")
        body = self._body
        req = Request(
            self.parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            self.remote,
            self.parser.get_http_version(),
            self._keep_alive,
        )
        if self.parser.should_upgrade():
            req.keep_alive = False  # answered, then the connection closes: what follows is not HTTP
        self._reset_message()
        self._messages_done += 1
        self._received(req)

    # -- the connection's

    cdef void _received(self, Request req) except *:
        raise NotImplementedError

    cdef void _fail(self, int status, str message, bint raise_=False) except *:
        raise NotImplementedError

    cdef void _continue(self) except *:
        raise NotImplementedError
