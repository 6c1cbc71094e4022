"""The compiled push-by-mid route against the interpreted handler it stands in front of.

For any query string and body, ``PushMidsRoute`` must answer what the general handler answers (status,
body, the HttpError raised) and make the same call to logic; it only takes the plain requests itself.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgate.http.messages import HttpError, Response
from imgate.http.server import Request
from imgate.logic import http_api
from imgate.logic._push_routes import PushMidsRoute


class FakeLogic:
    pushes_wait = False

    def __init__(self):
        self.calls = []

    def push_mids_nowait(self, op, mids, body):
        self.calls.append((op, list(mids), body))
        if 666 in mids:
            raise ValueError("no such user: 666")
        if 777 in mids:
            raise RuntimeError("a bug")
        return len(mids)

    def push_keys_nowait(self, op, keys, body):
        return len(keys)

    def __getattr__(self, name):  # the routes this test does not call
        return lambda *a: None


def handlers():
    logic = FakeLogic()
    router = http_api.build_routes(logic)
    route = router.resolve("POST", "/goim/push/mids")
    assert isinstance(route, PushMidsRoute)
    return logic, route


def answer(fn, req):
    try:
        resp = fn(req)
    except HttpError as e:
        return ("error", e.status, e.message)
    except RuntimeError as e:
        return ("bug", str(e))
    assert isinstance(resp, Response)
    return (resp.status, resp.body)


NUMBERS = st.one_of(st.integers(0, 10**12).map(str), st.sampled_from(["", "-1", "+2", "1e3", "٣", "00", "9" * 19,
                                                                        "2147483648", "666", "777", " 5", "5 "]))
QUERIES = st.one_of(
    st.builds(lambda a, b: f"operation={a}&mids={b}", NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"mids={b}&operation={a}", NUMBERS, NUMBERS),
    st.builds(lambda a, b, c: f"operation={a}&mids={b},{c}", NUMBERS, NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"operation={a}&mids={b}&mids={b}", NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"operation={a}&mids={b}&x=1", NUMBERS, NUMBERS),
    st.builds(lambda a: f"operation={a}", NUMBERS),
    st.builds(lambda a, b: f"operation={a}&mids=%3{b}", NUMBERS, NUMBERS),
    st.text(alphabet="opeatinmds=&,0123456789%+ ", max_size=40),
)


@settings(max_examples=800, deadline=None)
@given(QUERIES, st.sampled_from([b"", b"x", b"hello" * 10]))
def test_compiled_route_answers_as_the_general_handler(qs, body):
    logic_a, route = handlers()
    logic_b, other = handlers()
    req = Request("POST", "/goim/push/mids", qs, {}, body)
    assert answer(route, req) == answer(other.general, req)
    assert logic_a.calls == logic_b.calls


def test_plain_request_is_answered_by_the_route_itself():
    logic, route = handlers()
    resp = route(Request("POST", "/goim/push/mids", "operation=1000&mids=42", {}, b"hi"))
    assert (resp.status, resp.body) == (200, b'{"code":0,"message":"","data":{"targets":1}}')
    assert logic.calls == [(1000, [42], b"hi")]
    with pytest.raises(HttpError) as e:
        route(Request("POST", "/goim/push/mids", "mids=666&operation=1", {}, b"x"))
    assert e.value.status == 400 and "666" in e.value.message
