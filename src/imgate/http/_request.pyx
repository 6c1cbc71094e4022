"""One parsed HTTP request of imgate.http: what a handler receives.

Built by the connection (``_protocol.pyx``) from httptools' callbacks, or by the plain parser
(``_plain.pyx``) without them; the query string is split only when a handler asks for it.
"""

from urllib.parse import parse_qsl


cdef class Request:
    """One parsed HTTP request. ``headers`` keys are lower case (repeated headers joined with ", ")."""

    def __init__(self, str method, str path, str query_string="", dict headers=None, bytes body=b"",
                 remote=None, str version="1.1", bint keep_alive=True):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers if headers is not None else {}
        self.body = body
        self.remote = remote
        self.version = version
        self.keep_alive = keep_alive
        self.route = None

    @property
    def query_list(self):
        """All query parameters in order, repeated names kept."""
        cdef str qs, item, k, v
        cdef list out
        cdef Py_ssize_t eq
        if self._query_list is None:
            qs = self.query_string
            if "%" in qs or "+" in qs or ";" in qs:
                self._query_list = parse_qsl(qs, keep_blank_values=True)
            else:
                # nothing to unquote (the usual machine-made query): split it directly
                out = []
                for item in qs.split("&"):
                    if not item:
                        continue
                    eq = item.find("=")
                    if eq < 0:
                        out.append((item, ""))
                    else:
                        out.append((item[:eq], item[eq + 1:]))
                self._query_list = out
        return self._query_list

    @property
    def query(self):
        """Query parameters; the last value wins for a repeated name."""
        if self._query is None:
            self._query = dict(self.query_list)
        return self._query

    def __repr__(self):
        q = f"?{self.query_string}" if self.query_string else ""
        return f"<Request {self.method} {self.path}{q} body={len(self.body)}B from {self.remote}>"


cdef class Handler:
    """Base of the compiled handlers: the server's dispatcher calls their C method ``handle``, which
    builds no argument tuple; ``handler(req)`` is the same call from Python (each one's ``__call__``)."""

    cdef object handle(self, Request req):
        return self(req)   # a subclass made in Python has only its __call__
