"""Schemathesis against a real node's ``/openapi.json`` (issue 14, item 6): every operation of the
document, a bounded number of generated requests each, sent over loopback with an API key that has every
scope (``admin``), so authentication never hides a handler.

Each response must:
- not be a 5xx (``not_a_server_error``);
- have a status code and a content type the document declares for the operation, and a body that
  matches the declared schema (``status_code_conformance``, ``content_type_conformance``,
  ``response_schema_conformance``);
- agree with the document about what is valid: a request the schema allows is accepted
  (``positive_data_acceptance``) and one it forbids is refused with a 4xx (``negative_data_rejection``);
- not be 401 or 403 (the key has every scope).

The refusals that no schema can express are named below (``POSITIVE_REFUSALS``, the ``/im/send`` skip);
416 counts as a refusal, since the IM routes answer it for a range that is negative or beyond the inbox
(docs/im.md "Errors").
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (requirements-dev.txt)")

import jsonschema_rs  # noqa: E402  (schemathesis's own validator)
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.checks import not_a_server_error  # noqa: E402

from imgate.logic.openapi import openapi_document  # noqa: E402
from nodeutil import module_node  # noqa: E402

#: generated requests per operation and generation phase (about 21 operations; the whole module stays
#: well under a minute on a loaded 2-core machine)
EXAMPLES = 25

#: statuses that accept a schema-valid request. 404: a receiver without an inbox; 409: a cmid re-used with
#: another body. Not 401/403 (the key has every scope) and not 400 (that is the mismatch this test hunts).
ACCEPTED = ["2xx", "404", "409"]
#: per path, refusals of schema-valid requests that depend on the node's state, not on the request's shape
POSITIVE_REFUSALS = {
    "/im/sync": ["416"],   # `after` beyond the user's inbox (its max_seq is state, not schema)
    "/im/send": ["403"],   # a group the sender is not a member of (membership is state)
    "/im/groups/members": ["403"],  # `uid` not the owner or an admin of the group (state)
}
#: statuses that refuse a schema-violating request
REFUSED = ["400", "404", "405", "413", "416"]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          positive_data_acceptance, negative_data_rejection]


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "generation": {"with-security-parameters": False},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ACCEPTED},
            "negative_data_rejection": {"expected-statuses": REFUSED},
        },
        "operations": [
            {"include-path": path, "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED + extra}}}
            for path, extra in POSITIVE_REFUSALS.items()
        ],
    })


node = module_node()  # auth none for clients; the HTTP API needs the helper's admin key


# The node runs without demo = true, so the document it serves is ``openapi_document(demo=False)`` plus the
# credential scope of each route (test_served_document_is_the_fuzzed_one checks exactly that). Schemathesis
# builds its tests when pytest collects this module, before any node runs, so it loads that document here
# and every request goes to the node (``base_url``).
schema = schemathesis.openapi.from_dict(openapi_document(demo=False), config=_config())


def test_served_document_is_the_fuzzed_one(node):
    status, served = node.http("GET", "/openapi.json", api_key=None)
    assert status == 200
    scopes = {(m.upper(), p): (op["security"][0]["bearer"][0] if op["security"] else "public")
              for p, ops in served["paths"].items() for m, op in ops.items()}
    assert served == json.loads(json.dumps(openapi_document(demo=False, scopes=lambda m, p: scopes[m, p])))
    assert "public" != scopes["GET", "/list"] and scopes["GET", "/openapi.json"] == "public"


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_operation_matches_openapi(case, node):
    if case.path == "/im/send" and isinstance(case.body, dict) and isinstance(case.query, dict):
        # a user cannot message themselves (400 "'to' is the sender itself"): a rule between the query and
        # the body that the schema cannot state
        if _same_number(case.body.get("to"), case.query.get("uid")):  # 5.0 is the integer 5
            return
    response = case.call_and_validate(base_url=node.http_base, headers={"Authorization": f"Bearer {node.api_key}"},
                                      checks=CHECKS, timeout=10)
    # a 403 of a group's rules (membership is state) is not an authorization failure of the key
    group_rule = response.status_code == 403 and case.path.startswith(("/im/send", "/im/groups")) and \
        ("not a member" in response.text or "not the owner or an admin" in response.text)
    assert response.status_code not in (401, 403) or group_rule, \
        (case.method, case.path, response.status_code, response.text)


# -- The mismatches schemathesis found, replayed: for each request the served document's verdict (valid or
# not, from the parameter and body schemas, checked here with jsonschema_rs) and the node's (accepted or
# refused) must both be the expected one. These are fixed requests, so they stay red on a regression
# even on a run whose random examples miss it.

ACCEPT, REFUSE = "accept", "refuse"
REPLAYS = [
    # an empty optional integer was taken as its default
    ("GET", "/list", "limit=", None, REFUSE),
    ("GET", "/goim/online/top", "type=live&limit=", None, REFUSE),
    ("POST", "/goim/push/all", "operation=1000&speed=", None, REFUSE),   # what an object `speed` becomes
    # a repeated parameter: the last value won (limit=5&limit= was limit=default)
    ("GET", "/list", "limit=5&limit=7", None, REFUSE),
    ("POST", "/goim/push/mids", "operation=1000&mids=1&mids=2", None, REFUSE),   # only 2 got it
    ("GET", "/list", "limit=7", None, ACCEPT),
    # speed: int32 in the handler (goim's), unbounded in the document
    ("POST", "/goim/push/all", "operation=1000&speed=25397903739749", None, REFUSE),
    ("POST", "/goim/push/all", "operation=1000&speed=2147483647", None, ACCEPT),
    # mids: "anything not blank" in the document, int64s in the handler
    ("POST", "/goim/push/mids", "operation=1000&mids=%F1%9B%BD%B5", None, REFUSE),
    ("POST", "/goim/push/mids", "operation=1000&mids=abc", None, REFUSE),
    ("POST", "/goim/push/mids", "operation=1000&mids=9223372036854775808", None, REFUSE),
    ("POST", "/goim/push/mids", "operation=1000&mids=1,-9223372036854775808,2", None, ACCEPT),
    # operations 22-33 are IM's: refused by every push route, allowed by the document
    ("POST", "/goim/push/keys", "operation=25&keys=k", None, REFUSE),
    ("POST", "/goim/push/all", "operation=33", None, REFUSE),
    ("POST", "/goim/push/all", "operation=34", None, ACCEPT),
    # blanks: the handler strips Python's whitespace (\x1f, \x85 ...), not only JSON Schema's \s
    ("POST", "/goim/push/room", "operation=1000&type=%1F&room=1", None, REFUSE),
    ("POST", "/goim/push/keys", "operation=1000&keys=%C2%85,%20", None, REFUSE),
    ("POST", "/goim/push/room", "operation=1000&type=live&room=%EF%BB%BF", None, ACCEPT),   # U+FEFF is not blank
    # /count: an enum in the document, blanks stripped by the handler
    ("GET", "/count", "type=%20room%09", None, ACCEPT),
    ("GET", "/count", "type=rooms", None, REFUSE),
    # /im/send's body: content null, cmid "~...", type "read" or "" were valid per the document
    ("POST", "/im/send", "uid=1", {"cmid": "r1", "to": 2, "content": None}, REFUSE),
    ("POST", "/im/send", "uid=1", {"cmid": "~r2", "to": 2, "content": "x"}, REFUSE),
    ("POST", "/im/send", "uid=1", {"cmid": "r3", "to": 2, "type": "read", "content": "x"}, REFUSE),
    ("POST", "/im/send", "uid=1", {"cmid": "r4", "to": 2, "type": "", "content": "x"}, REFUSE),
    ("POST", "/im/send", "uid=1", {"cmid": "r5", "to": 2, "group": 3, "content": "x"}, REFUSE),
    # ... and 2.0 is the integer 2 in JSON (Schema): the handler refused it
    ("POST", "/im/send", "uid=1", {"cmid": "r6", "to": 2.0, "content": "x"}, ACCEPT),
]


def _wire_value(schema: dict, texts: list[str]):
    """A query parameter's value as the document types it (one value; an array is comma-separated)."""
    def typed(text, s):
        if s.get("type") == "integer" and re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        return text
    if len(texts) != 1:
        return texts   # a repeated parameter: an array, never what a scalar schema allows
    if schema.get("type") == "array":
        return [typed(t, schema["items"]) for t in texts[0].split(",")]
    return typed(texts[0], schema)


def _schema_verdict(doc: dict, method: str, path: str, query: str, body) -> str:
    op = doc["paths"][path][method.lower()]
    sent = parse_qs(query, keep_blank_values=True)
    for p in op.get("parameters", []):
        if p["name"] not in sent:
            if p.get("required"):
                return REFUSE
            continue
        if not jsonschema_rs.validator_for(p["schema"]).is_valid(_wire_value(p["schema"], sent[p["name"]])):
            return REFUSE
    if "requestBody" in op:
        media = op["requestBody"]["content"]
        if "application/json" in media:
            resolved = json.loads(json.dumps(media["application/json"]["schema"]))
            if not jsonschema_rs.validator_for(resolved).is_valid(body):
                return REFUSE
    return ACCEPT


@pytest.mark.parametrize("method,path,query,body,expected", REPLAYS,
                         ids=[f"{m} {p}?{q} {json.dumps(b) if b else ''}".strip() for m, p, q, b, _ in REPLAYS])
def test_found_mismatch_stays_fixed(node, method, path, query, body, expected):
    status, served = node.http("GET", "/openapi.json", api_key=None)
    assert status == 200
    assert _schema_verdict(served, method, path, query, body) == expected, "the document"
    raw = json.dumps(body).encode() if body is not None else (b"x" if method == "POST" else None)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    status, reply = node.http(method, f"{path}?{query}", raw, headers=headers)
    got = ACCEPT if status in (200, 404, 409) else REFUSE if status in (400, 416) else f"HTTP {status}"
    assert got == expected, (status, reply)
    if got == REFUSE:   # a clear 4xx: the envelope with a non-zero code and a message
        assert reply["code"] != 0 and reply["message"], reply
