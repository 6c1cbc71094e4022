"""The C parser of the common auth body (imgate.auth._body) against the json-module parser: for every
body, either C declines (None) or it returns exactly what the full parser returns; the full parser is
the oracle, and it refuses or accepts on its own."""

from __future__ import annotations

import json
import random

import pytest

from imgate.auth import (
    MAX_ACCEPTS, MAX_KEY_LEN, MAX_PLATFORM_LEN, MAX_ROOM_ID_LEN, AuthError, parse_auth_body, parse_json_body,
)
from imgate.auth._body import parse_plain

FIELDS = ("mid", "key", "room_id", "platform", "accepts", "token")


def plain(body: bytes):
    return parse_plain(body, MAX_KEY_LEN, MAX_ROOM_ID_LEN, MAX_PLATFORM_LEN, MAX_ACCEPTS)


def full(body: bytes):
    try:
        return parse_json_body(body)
    except AuthError:
        return "refused"


def agree(body: bytes) -> bool:
    """True when C took the body; fails the test when it took it differently from the oracle."""
    got = plain(body)
    if got is None:
        return False
    want = full(body)
    assert want != "refused", f"C accepted {body!r}, which the full parser refuses"
    assert dict(zip(FIELDS, got)) == want, body
    assert [type(v) for v in got] == [type(want[k]) for k in FIELDS], body
    return True


def test_the_common_bodies_are_taken_in_c():
    for body in (
        b'{"mid": 123, "key": "", "room_id": "live://1000", "platform": "web", "accepts": [1000, 1001]}',
        b'{"mid":1,"key":"k-1","room_id":"","platform":"bench","accepts":[]}',
        b'{"mid": 7, "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.sig", "accepts": [1000, 1000, -5]}',
        b' { } ', b'{"mid": null, "key": null, "accepts": null}', b'{"mid": -0}',
        b'{"mid": 1, "mid": 2, "room_id": "a://b", "room_id": null}',  # JSON: the last one counts
    ):
        assert agree(body), body
    assert plain(b'{"accepts": [3, 1, 3, 2]}')[4] == (3, 1, 2)


@pytest.mark.parametrize("body", [
    b"", b"[]", b'{"mid": 1', b'{"mid": 1}x', b'{"mid": 01}', b'{"mid": 1.0}', b'{"mid": 1e3}', b'{"mid": -1}',
    b'{"mid": true}', b'{"mid": "12"}', b'{"key": "a,b"}', b'{"key": "a b"}', b'{"key": "\\u0041"}',
    b'{"room_id": "live"}', b'{"room_id": "://1"}', b'{"room_id": "live://"}', b'{"platform": 5}',
    b'{"accepts": [1, "2"]}', b'{"accepts": [2147483648]}', b'{"accepts": [1,]}', b'{"other": 1}',
    b'{"mid": 1,}', b'{,}', b'{"key": "\xc3\xa9"}', b'{"token": 5}', b'{"mid" 1}', b'{"mid": 1234567890123456789}',
    b'\xef\xbb\xbf{}', b'{"key": "' + b"k" * (MAX_KEY_LEN + 1) + b'"}',
    b'{"accepts": [' + b",".join(b"1" for _ in range(MAX_ACCEPTS + 1)) + b"]}",
])
def test_what_c_leaves_to_the_full_parser(body):
    """Declined: an error, or something outside the plain subset; the public parser still answers."""
    assert plain(body) is None
    want = full(body)
    try:
        assert parse_auth_body(body) == want
    except AuthError:
        assert want == "refused"


def _value(rng: random.Random):
    return rng.choice([
        lambda: rng.randint(-3, 10**19), lambda: rng.choice(["", "live://1", "a://", "x y", "k,1", "é", "\\n"]),
        lambda: None, lambda: [rng.choice([-2**31 - 1, -2**31, 2**31 - 1, 2**31, rng.randint(0, 2000)])
                               for _ in range(rng.randint(0, 3))],
        lambda: rng.random(), lambda: True, lambda: {"a": 1}, lambda: [1, "x"], lambda: str(rng.randint(0, 99)),
    ])()


def test_random_bodies_agree_with_the_full_parser():
    rng = random.Random(15)
    taken = 0
    for _ in range(20_000):
        obj = {k: _value(rng) for k in rng.sample(FIELDS + ("extra",), rng.randint(0, 4))}
        body = json.dumps(obj, separators=rng.choice([(",", ":"), (", ", ": ")]), ensure_ascii=rng.random() < 0.5)
        raw = body.encode()
        if rng.random() < 0.2 and raw:  # damaged: cut, or one byte changed
            cut = rng.randrange(len(raw))
            raw = raw[:cut] if rng.random() < 0.5 else raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1:]
        taken += agree(raw)
    assert taken > 2000  # the fast path is really exercised
