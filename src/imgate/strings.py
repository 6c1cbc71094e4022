"""One copy of a string that many connections hold (a room id, a platform name).

Interning shares it, and an interned string is freed with its last holder, so a client's odd value
is not kept. Not on CPython 3.12.0-3.12.5: there every interned string is immortal (CPython issue
113993, mortal again from 3.12.6), and each new room id a client sends would stay for good. There
each connection keeps its own copy instead.
"""

from __future__ import annotations

import sys


def interning_frees(version: tuple) -> bool:
    """Whether interned strings are freed with their last holder on this CPython ``version``."""
    return not ((3, 12, 0) <= tuple(version[:3]) < (3, 12, 6))


share = sys.intern if interning_frees(sys.version_info) else str
