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

The refusals that no schema can express are named below (``POSITIVE_REFUSALS``, the ``/im/send`` filter);
416 counts as a refusal, since the IM routes answer it for a range that is negative or beyond the inbox
(docs/im.md "Errors").
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (requirements-dev.txt)")

from hypothesis import HealthCheck, Phase, assume, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
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
from nodeutil import NodeThread  # noqa: E402

#: generated requests per operation and generation phase (about 21 operations; the whole module stays
#: well under a minute on a loaded 2-core machine)
EXAMPLES = 25

#: statuses that accept a schema-valid request. 404: a receiver without an inbox; 409: a cmid re-used with
#: another body. Not 401/403 (the key has every scope) and not 400 (that is the mismatch this test hunts).
ACCEPTED = ["2xx", "404", "409"]
#: per path, refusals of schema-valid requests that depend on the node's state, not on the request's shape
POSITIVE_REFUSALS = {
    "/im/sync": ["416"],   # `after` beyond the user's inbox (its max_seq is state, not schema)
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


@pytest.fixture(scope="module")
def node():
    n = NodeThread().start()   # auth none for clients; the HTTP API needs the helper's admin key
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def api_schema(node):
    return schemathesis.openapi.from_url(node.http_base + "/openapi.json", config=_config(), timeout=10)


# the node runs without demo = true: the document it serves has every route but the demo helpers
_DOC = openapi_document(demo=False)
OPERATIONS = sorted((method.upper(), path) for path, ops in _DOC["paths"].items() for method in ops)
# (method, path, mode): invalid requests only where there is something to make invalid
CASES = [pytest.param(m, p, mode, id=f"{m} {p} {name}")
         for m, p in OPERATIONS
         for mode, name in ((GenerationMode.POSITIVE, "valid"), (GenerationMode.NEGATIVE, "invalid"))
         if mode is GenerationMode.POSITIVE
         or _DOC["paths"][p][m.lower()].get("parameters") or _DOC["paths"][p][m.lower()].get("requestBody")]


def test_document_lists_every_operation(node):
    status, served = node.http("GET", "/openapi.json", api_key=None)
    assert status == 200
    assert sorted((m.upper(), p) for p, ops in served["paths"].items() for m in ops) == OPERATIONS


@pytest.mark.parametrize("method,path,mode", CASES)
def test_operation_matches_openapi(api_schema, node, method, path, mode):
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {node.api_key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case):
        if path == "/im/send" and isinstance(case.body, dict) and isinstance(case.query, dict):
            # a user cannot message themselves (400 "'to' is the sender itself"): a rule between the query
            # and the body that the schema cannot state
            assume(case.body.get("to") != case.query.get("uid"))
        response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)
        assert response.status_code not in (401, 403), (method, path, response.status_code, response.text)

    run()
