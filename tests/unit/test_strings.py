"""imgate.strings.share: one copy of equal strings where interning frees them, a plain copy where
interned strings are immortal (CPython 3.12.0-3.12.5)."""

from __future__ import annotations

import sys

from imgate import strings


def test_interning_is_used_only_where_interned_strings_are_freed():
    assert strings.interning_frees((3, 11, 7, "final", 0))
    assert strings.interning_frees((3, 12, 6))
    assert strings.interning_frees((3, 13, 0))
    assert not strings.interning_frees((3, 12, 0))
    assert not strings.interning_frees((3, 12, 5, "final", 0))


def test_equal_room_ids_from_two_connections_become_one_string_here():
    a = "".join(["live://", "room", "-7"])  # built at run time: two distinct objects
    b = "".join(["live://", "room-", "7"])
    assert a == b and a is not b
    if strings.interning_frees(sys.version_info):
        assert strings.share(a) is strings.share(b)
    else:
        assert strings.share(a) == a
