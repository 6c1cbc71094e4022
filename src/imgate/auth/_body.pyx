# cython: language_level=3, boundscheck=False, wraparound=False
"""The auth body (op 7) of the common case, parsed in C: one pass, no dict, no json module.

:func:`parse_plain` understands a strict subset of JSON: one object whose keys are the six known
fields, with ASCII strings that hold no escapes, integer literals, arrays of integers and ``null``.
It applies the same rules as :func:`imgate.auth.parse_auth_body` and returns the fields as a tuple,
or ``None`` for everything else -- any other key or value, an escape, non-ASCII text, an error of
any kind -- and the caller then runs the full parser, which accepts what JSON accepts and names the
rule a refused body breaks. So a body is never accepted here that the full parser would refuse, nor
read differently.
"""

from libc.stdint cimport int64_t

cdef enum:
    F_MID = 0
    F_KEY = 1
    F_ROOM = 2
    F_PLATFORM = 3
    F_ACCEPTS = 4
    F_TOKEN = 5
    F_UNKNOWN = 6

cdef int64_t INT32_MIN = -(1 << 31)
cdef int64_t INT32_MAX = (1 << 31) - 1


cdef inline Py_ssize_t _ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (p[i] == 32 or p[i] == 9 or p[i] == 10 or p[i] == 13):
        i += 1
    return i


cdef inline int _field(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Py_ssize_t n = b - a
    if n == 3 and p[a] == b'm' and p[a + 1] == b'i' and p[a + 2] == b'd':
        return F_MID
    if n == 3 and p[a] == b'k' and p[a + 1] == b'e' and p[a + 2] == b'y':
        return F_KEY
    if n == 7 and p[a] == b'r' and p[a + 1] == b'o' and p[a + 2] == b'o' and p[a + 3] == b'm' and \
            p[a + 4] == b'_' and p[a + 5] == b'i' and p[a + 6] == b'd':
        return F_ROOM
    if n == 8 and p[a] == b'p' and p[a + 1] == b'l' and p[a + 2] == b'a' and p[a + 3] == b't' and \
            p[a + 4] == b'f' and p[a + 5] == b'o' and p[a + 6] == b'r' and p[a + 7] == b'm':
        return F_PLATFORM
    if n == 7 and p[a] == b'a' and p[a + 1] == b'c' and p[a + 2] == b'c' and p[a + 3] == b'e' and \
            p[a + 4] == b'p' and p[a + 5] == b't' and p[a + 6] == b's':
        return F_ACCEPTS
    if n == 5 and p[a] == b't' and p[a + 1] == b'o' and p[a + 2] == b'k' and p[a + 3] == b'e' and \
            p[a + 4] == b'n':
        return F_TOKEN
    return F_UNKNOWN


cdef inline Py_ssize_t _next(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, unsigned char close,
                              bint* closed) noexcept nogil:
    """After a value: past a comma (and the space after it), or past ``close`` (``closed`` set); -1 else."""
    i = _ws(p, i, n)
    closed[0] = False
    if i < n and p[i] == b',':
        return _ws(p, i + 1, n)
    if i < n and p[i] == close:
        closed[0] = True
        return i + 1
    return -1


cdef inline Py_ssize_t _string_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """p[i] is just past the opening quote: the index of the closing quote, or -1 when the string
    holds an escape, a control character or a non-ASCII byte (left to the full parser)."""
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == b'"':
            return i
        if c == b'\\' or c < 32 or c > 126:
            return -1
        i += 1
    return -1


cdef inline Py_ssize_t _int_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int64_t* out) noexcept nogil:
    """An integer literal of at most 18 digits (no overflow possible), optionally negative, in
    JSON's form (no leading zero, no fraction or exponent); its end, or -1."""
    cdef bint neg = False
    cdef int64_t v = 0
    cdef Py_ssize_t start
    if i < n and p[i] == b'-':
        neg = True
        i += 1
    start = i
    while i < n and 48 <= p[i] <= 57:  # '0'..'9'
        v = v * 10 + (p[i] - 48)
        i += 1
    if i == start or i - start > 18 or (p[start] == b'0' and i - start > 1):
        return -1
    if i < n and (p[i] == b'.' or p[i] == b'e' or p[i] == b'E'):
        return -1
    out[0] = -v if neg else v
    return i


def parse_plain(bytes body, Py_ssize_t max_key, Py_ssize_t max_room, Py_ssize_t max_platform,
                Py_ssize_t max_accepts):
    """``(mid, key, room_id, platform, accepts, token)`` of a plain auth body, or None (see the
    module doc): the caller runs the full parser then."""
    cdef const unsigned char* p = body
    cdef Py_ssize_t n = len(body)
    cdef Py_ssize_t i, a, e, j, count
    cdef int f
    cdef bint closed
    cdef int64_t v
    cdef int64_t mid = 0
    cdef Py_ssize_t sa[6]
    cdef Py_ssize_t se[6]   # span of each string field; se < 0: absent or null
    cdef list accepts = None
    cdef dict seen
    for j in range(6):
        sa[j] = 0
        se[j] = -1
    i = _ws(p, 0, n)
    if i >= n or p[i] != b'{':
        return None
    i = _ws(p, i + 1, n)
    if i < n and p[i] == b'}':
        i += 1
    else:
        while True:
            if i >= n or p[i] != b'"':
                return None
            a = i + 1
            e = _string_end(p, a, n)
            if e < 0:
                return None
            f = _field(p, a, e)
            if f == F_UNKNOWN:
                return None
            i = _ws(p, e + 1, n)
            if i >= n or p[i] != b':':
                return None
            i = _ws(p, i + 1, n)
            if i >= n:
                return None
            if p[i] == b'n':  # null: as if the field were absent (a later duplicate still counts)
                if i + 4 > n or p[i + 1] != b'u' or p[i + 2] != b'l' or p[i + 3] != b'l':
                    return None
                i += 4
                if f == F_MID:
                    mid = 0
                elif f == F_ACCEPTS:
                    accepts = None
                else:
                    se[f] = -1
            elif f == F_MID:
                i = _int_end(p, i, n, &mid)
                if i < 0 or mid < 0:
                    return None
            elif f == F_ACCEPTS:
                if p[i] != b'[':
                    return None
                accepts = []
                i = _ws(p, i + 1, n)
                if i < n and p[i] == b']':
                    i += 1
                else:
                    while True:
                        i = _int_end(p, i, n, &v)
                        if i < 0 or v < INT32_MIN or v > INT32_MAX:
                            return None
                        accepts.append(v)
                        if len(accepts) > max_accepts:
                            return None
                        i = _next(p, i, n, b']', &closed)
                        if i < 0:
                            return None
                        if closed:
                            break
            else:
                if p[i] != b'"':
                    return None
                e = _string_end(p, i + 1, n)
                if e < 0:
                    return None
                sa[f] = i + 1
                se[f] = e
                i = e + 1
            i = _next(p, i, n, b'}', &closed)
            if i < 0:
                return None
            if closed:
                break
    if _ws(p, i, n) != n:
        return None
    # the rules of parse_auth_body, on ASCII text without escapes
    count = se[F_KEY] - sa[F_KEY] if se[F_KEY] >= 0 else 0
    if count > max_key:
        return None
    for j in range(sa[F_KEY], sa[F_KEY] + count):
        if p[j] == b',' or p[j] == b' ':
            return None
    count = se[F_ROOM] - sa[F_ROOM] if se[F_ROOM] >= 0 else 0
    if count > max_room:
        return None
    if count:
        j = sa[F_ROOM]
        e = j + count
        a = -1
        while j + 2 < e:
            if p[j] == b':' and p[j + 1] == b'/' and p[j + 2] == b'/':
                a = j
                break
            j += 1
        if a <= sa[F_ROOM] or a + 3 >= e:  # no "://", or nothing before or after it
            return None
    if se[F_PLATFORM] >= 0 and se[F_PLATFORM] - sa[F_PLATFORM] > max_platform:
        return None
    out = []
    for f in (F_KEY, F_ROOM, F_PLATFORM):
        out.append(body[sa[f]:se[f]].decode("ascii") if se[f] >= 0 else "")
    if accepts:
        seen = {}
        for v in accepts:
            seen[v] = None
        acc = tuple(seen)  # duplicates dropped, order kept
    else:
        acc = ()
    token = body[sa[F_TOKEN]:se[F_TOKEN]].decode("ascii") if se[F_TOKEN] >= 0 else ""
    return mid, out[0], out[1], out[2], acc, token
