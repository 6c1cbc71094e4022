"""The OpenAPI 3.1 document of the logic HTTP API, served at ``GET /openapi.json``.

``OPENAPI`` describes every route (the demo helpers included); ``openapi_document(demo=False)`` leaves out
the routes that exist only when the node runs with ``demo = true``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import imgate

__all__ = ["OPENAPI", "DEMO_PATHS", "openapi_document"]

INT32 = {"type": "integer", "format": "int32", "minimum": -(1 << 31), "maximum": (1 << 31) - 1}
INT64 = {"type": "integer", "format": "int64", "minimum": -(1 << 63), "maximum": (1 << 63) - 1}


def _query(name: str, description: str, schema: dict[str, Any], required: bool = True, **extra: Any) -> dict:
    p = {"name": name, "in": "query", "required": required, "description": description, "schema": schema}
    p.update(extra)
    return p


# The characters the handlers strip around a parameter and its list items (Python's str.isspace(), spelled
# out: JSON Schema's \s is ECMA's, which differs from Python's on \x1c-\x1f, \x85 and \ufeff).
_BLANKS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: a string parameter: anything with a character that is not blank (the handler strips the blanks)
_TEXT = {"type": "string", "pattern": f"[^{_BLANKS}]"}


def _csv(name: str, description: str, example: str) -> dict:
    """A comma-separated list of strings: at least one item that is not blank (blank items are dropped)."""
    return _query(name, description, {"type": "string", "pattern": f"[^,{_BLANKS}]"}, example=example)


def _reply(description: str, data: dict[str, Any]) -> dict:
    """A 200 reply whose envelope's ``data`` has the ``data`` schema."""
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Envelope"},
                        {"type": "object", "properties": {"data": data}},
                    ]
                }
            }
        },
    }


_BAD = {"$ref": "#/components/responses/BadRequest"}
_TOO_BIG = {"$ref": "#/components/responses/TooLarge"}

_OPERATION = _query(
    "operation",
    "Push operation written in the frame header (goim: business pushes use >= 1000); 22-33 are reserved for IM "
    "(400: IM messages go through /im/send).",
    {**INT32, "not": {"minimum": 22, "maximum": 33}},
    example=1000,
)
_MESSAGE_BODY = {
    "required": True,
    "description": "The message: the raw request body becomes the frame body, byte for byte. Must not be empty.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}}},
}
_TARGETS = {
    "oneOf": [
        {
            "type": "object",
            "required": ["targets"],
            "properties": {"targets": {"type": "integer", "description": "Connections the push was routed to."}},
        },
        {"type": "null"},
    ]
}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 10000}
_SESSION = {"$ref": "#/components/schemas/Session"}


def _push(summary: str, description: str, params: list[dict]) -> dict:
    return {
        "post": {
            "tags": ["push"],
            "summary": summary,
            "description": description,
            "parameters": [_OPERATION, *params],
            "requestBody": _MESSAGE_BODY,
            "responses": {
                "200": _reply("Accepted for delivery.", _TARGETS),
                "400": _BAD,
                "413": _TOO_BIG,
            },
        }
    }


def _get(tag: str, summary: str, params: list[dict], data: dict, description: str = "") -> dict:
    op: dict[str, Any] = {"tags": [tag], "summary": summary, "parameters": params, "responses": {"200": _reply("OK.", data)}}
    if description:
        op["description"] = description
    if params:
        op["responses"]["400"] = _BAD
    return {"get": op}


_PATHS: dict[str, dict] = {
    "/goim/push/keys": _push(
        "Push to connections by key",
        "Delivers the message to the connections holding the given keys (goim `pushKeys`).",
        [_csv("keys", "Comma-separated connection keys.", "k1,k2")],
    ),
    "/goim/push/mids": _push(
        "Push to users",
        "Delivers the message to every connection of the given users (goim `pushMids`).",
        # the BRIEF's `mids=1,2` is OpenAPI's form style without explode: an array of int64 joined by commas
        [_query("mids", "Comma-separated user ids (int64); duplicates count once.",
                {"type": "array", "items": INT64, "minItems": 1}, style="form", explode=False, example=[1, 2])],
    ),
    "/goim/push/room": _push(
        "Push to a room",
        "Delivers the message to every member of room `type://room` (goim `pushRoom`).",
        [
            _query("type", "Room type (the part before `://`).", _TEXT, example="live"),
            _query("room", "Room id within the type (the part after `://`).", _TEXT, example="1000"),
        ],
    ),
    "/goim/push/all": _push(
        "Broadcast to every connection",
        "Delivers the message to every connection of the cluster (goim `pushAll`).",
        [_query("speed", "Rate limit hint for the broadcast (goim's `speed`); 0 means no limit.", {"type": "integer", "format": "int32", "minimum": 0, "maximum": (1 << 31) - 1}, required=False)],
    ),
    "/goim/online/top": _get(
        "online",
        "Most populated rooms of a type",
        [
            _query("type", "Room type.", _TEXT, example="live"),
            _query("limit", "How many rooms (default 20).", _LIMIT, required=False),
        ],
        {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["room_id", "count"],
                "properties": {"room_id": {"type": "string", "example": "live://1000"}, "count": {"type": "integer"}},
            },
        },
        "Rooms in descending order of online count.",
    ),
    "/goim/online/room": _get(
        "online",
        "Online counts of rooms",
        [
            _query("type", "Room type.", _TEXT, example="live"),
            _csv("rooms", "Comma-separated room ids within the type.", "1000,1001"),
        ],
        {"type": "object", "additionalProperties": {"type": "integer"}, "description": "room id -> online count"},
    ),
    "/goim/online/total": _get(
        "online",
        "Cluster totals",
        [],
        {
            "type": "object",
            "properties": {k: {"type": "integer"} for k in ("conn_count", "ip_count", "user_count", "server_count")},
        },
    ),
    "/session": _get(
        "query",
        "Connections of a user",
        [_query("uid", "User id (mid).", INT64, example=42)],
        {"type": "array", "items": _SESSION},
    ),
    "/count": _get(
        "query",
        "Online counts per room or per server",
        [_query("type", "What to count by: `room` or `server` (blanks around it are ignored).",
                {"type": "string", "pattern": f"^[{_BLANKS}]*(room|server)[{_BLANKS}]*$"}, example="room")],
        {"type": "object", "additionalProperties": {"type": "integer"}, "description": "room id or server id -> count"},
    ),
    "/room": _get(
        "query",
        "One room: online count and where its members are",
        [_query("rid", "Room id `type://id`.", _TEXT, example="live://1000")],
        {
            "type": "object",
            "properties": {
                "room_id": {"type": "string"},
                "count": {"type": "integer"},
                "servers": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
    ),
    "/list": _get(
        "query",
        "Live sessions (debug)",
        [_query("limit", "At most this many sessions (default 1000).", _LIMIT, required=False)],
        {"type": "array", "items": _SESSION},
        "A debugging aid: lists live sessions across the cluster.",
    ),
    "/openapi.json": {
        "get": {
            "tags": ["service"],
            "summary": "This document",
            "responses": {"200": {"description": "The OpenAPI document (not enveloped).", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }
    },
    "/metrics": {
        "get": {
            "tags": ["service"],
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text exposition format.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }
    },
    "/healthz": {
        "get": {
            "tags": ["service"],
            "summary": "Health of the node",
            "responses": {
                "200": _reply("Healthy.", {"type": "object"}),
                "503": {"description": "Unhealthy; `data` says why.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
            },
        }
    },
    "/": {
        "get": {
            "tags": ["demo"],
            "summary": "The demo page",
            "responses": {"200": {"description": "A static HTML page: a WebSocket client of the node.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
    "/demo.js": {
        "get": {
            "tags": ["demo"],
            "summary": "The demo page's script",
            "responses": {"200": {"description": "JavaScript.", "content": {"text/javascript": {"schema": {"type": "string"}}}}},
        }
    },
    "/chat": {
        "get": {
            "tags": ["demo"],
            "summary": "The chat demo page (single chat over the IM protocol)",
            "responses": {"200": {"description": "A static HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
    "/chat.js": {
        "get": {
            "tags": ["demo"],
            "summary": "The chat demo page's script",
            "responses": {"200": {"description": "JavaScript (an ES module).", "content": {"text/javascript": {"schema": {"type": "string"}}}}},
        }
    },
    "/imgate-im.js": {
        "get": {
            "tags": ["demo"],
            "summary": "The IM client for web apps (an ES module: ImClient, pack, unpack)",
            "responses": {"200": {"description": "JavaScript (an ES module).", "content": {"text/javascript": {"schema": {"type": "string"}}}}},
        }
    },
    "/demo/config": {
        "get": {
            "tags": ["demo"],
            "summary": "Settings for the demo page (only with demo = true)",
            "responses": {
                "200": _reply(
                    "Where and how the page connects.",
                    {
                        "type": "object",
                        "properties": {
                            "ws_url": {"type": "string", "example": "ws://127.0.0.1:3102/sub"},
                            "room_id": {"type": "string", "example": "live://1000"},
                            "mid": {"type": "integer"},
                            "token": {"type": "string"},
                        },
                    },
                ),
                "404": {"$ref": "#/components/responses/NotFound"},
            },
        }
    },
    "/demo/token": {
        "post": {
            "tags": ["demo"],
            "summary": "Mint a token for a user (only with demo = true)",
            "parameters": [_query("mid", "User id the token is for.", INT64, example=42)],
            "responses": {
                "200": _reply(
                    "A token to put in the auth frame.",
                    {"type": "object", "properties": {"mid": INT64, "token": {"type": "string"}}},
                ),
                "400": _BAD,
                "404": {"$ref": "#/components/responses/NotFound"},
            },
        }
    },
}

DEMO_PATHS = frozenset({"/demo/config", "/demo/token"})


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

# -- IM for backends (imgate/im/http.py; the wire protocol is in docs/im.md)
_UID = _query("uid", "The user the call acts for (int64, > 0).", {"type": "integer", "format": "int64", "minimum": 1}, example=1)
_IM_ERRORS = {
    "400": _BAD,
    "404": _error_response("The receiver has no inbox (unknown receiver)."),
    "409": _error_response("The cmid was used before by this sender for a different message."),
    "413": _error_response("The content exceeds max_message_bytes (or the body max_http_body)."),
    "416": _error_response("A range beyond the inbox, negative, or over im_sync_max_limit."),
    "503": _error_response("The message store cannot write now (locked, full, overloaded): nothing was stored."),
}
_MSG = {"$ref": "#/components/schemas/Msg"}
_INT64_ID = {"type": "integer", "format": "int64", "minimum": 1, "maximum": (1 << 63) - 1}
_IM_PATHS = {
    "/im/send": {"post": {
        "tags": ["im"], "summary": "Send a message as a user, to a user or a group",
        "description": "Single chat: stores the message in both inboxes and pushes op 24 to every connection of "
                       "both users. Group: stores it in the group's timeline with `gseq` its place; in write mode also "
                       "the sender's inbox entry (`seq`) and the fan-out job to the others, in read mode no entry "
                       "(`seq` 0). Answers once it is durable. A resend with the same "
                       "`cmid` answers the original reply and stores nothing.",
        "parameters": [_UID],
        "requestBody": {"required": True, "description": "A MSG_SEND object.", "content": {"application/json": {
            "schema": {"type": "object", "required": ["cmid", "content"],
                       "oneOf": [{"required": ["to"], "not": {"required": ["group"]}},
                                 {"required": ["group"], "not": {"required": ["to"]}}],
                       "properties": {
                "cmid": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^~]",
                         "description": "Chosen by the client; `~` starts the server's own (read notices)."},
                "to": {"type": "integer", "format": "int64", "minimum": 1, "maximum": (1 << 63) - 1,
                       "description": "The receiver; not the sender itself (400)."},
                "group": {"type": "integer", "format": "int64", "minimum": 1, "maximum": (1 << 63) - 1,
                          "description": "A group the sender is a member of (403 otherwise, 404 if none)."},
                "type": {"type": "string", "minLength": 1, "maxLength": 32, "not": {"enum": ["read", "member", "mode"]},
                         "default": "text", "description": "`read`, `member` and `mode` are the server's."},
                "content": {"description": "Any JSON value but null (null counts as missing: 400).",
                            "not": {"type": "null"}}}}}}},
        "responses": {"200": _reply("Durable.", {"type": "object", "properties": {
            "cmid": {"type": "string"}, "msg_id": {"type": "string"}, "seq": {"type": "integer"},
            "group": {"type": "integer"}, "gseq": {"type": "integer"},
            "ts": {"type": "integer", "description": "ms since the epoch"}}}), **_IM_ERRORS,
            "403": _error_response("The sender is not a member of the group.")},
    }},
    "/im/sync": {"get": {
        "tags": ["im"], "summary": "Inbox entries after a seq",
        "parameters": [_UID,
                       _query("after", "Entries with a greater seq (default 0).", {"type": "integer", "minimum": 0}, required=False),
                       _query("limit", "At most this many (default 100, at most im_sync_max_limit).", {"type": "integer", "minimum": 1}, required=False)],
        "responses": {"200": _reply("A SYNC_REPLY.", {"type": "object", "properties": {
            "msgs": {"type": "array", "items": _MSG}, "has_more": {"type": "boolean"},
            "max_seq": {"type": "integer"}, "min_seq": {"type": "integer", "description": "Oldest seq kept."},
            "truncated": {"type": "boolean", "description": "Entries after `after` were removed by retention."},
            "groups": {"type": "array"}}}), **_IM_ERRORS},
    }},
    "/im/conversations": {"get": {
        "tags": ["im"], "summary": "A user's conversations, newest first",
        "parameters": [_UID, _query("limit", "At most this many (default 100).", {"type": "integer", "minimum": 1, "maximum": 1000}, required=False)],
        "responses": {"200": _reply("The conversation list.", {"type": "array", "items": {"type": "object", "properties": {
            "conv": {"type": "string", "example": "u:1:2"}, "peer": {"type": "integer"},
            "unread": {"type": "integer"}, "read_seq": {"type": "integer"}, "last": _MSG}}}), **_IM_ERRORS},
    }},
    "/im/groups": {
        "post": {
            "tags": ["im"], "summary": "Create a group",
            "description": "The user `uid` is its owner and a member. Members get an inbox if they had none. The "
                           "group's first message (type `member`) lists them. A group with more than "
                           "group_write_limit members starts in read fan-out mode.",
            "parameters": [_UID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 128},
                "members": {"type": "array", "items": _INT64_ID}}}}}},
            "responses": {"200": _reply("Created.", {"type": "object", "properties": {"group": {"type": "integer"}}}),
                          **_IM_ERRORS, "409": _error_response("More members than group_max_members.")},
        },
        "get": {
            "tags": ["im"], "summary": "A group's name, owner, admins, member count and mode",
            "parameters": [_query("group", "The group id.", _INT64_ID)],
            "responses": {"200": _reply("The group.", {"type": "object", "properties": {
                "group": {"type": "integer"}, "name": {"type": "string"}, "owner": {"type": "integer"},
                "admins": {"type": "array", "items": {"type": "integer"}}, "members": {"type": "integer"},
                "mode": {"type": "string", "enum": ["write", "read"]},
                "max_gseq": {"type": "integer", "description": "The newest message's place in the timeline."}}}),
                "400": _BAD, "404": _error_response("No such group."), "503": _IM_ERRORS["503"]},
        },
    },
    "/im/groups/members": {"post": {
        "tags": ["im"], "summary": "Add and remove members, make admins",
        "description": "A membership change is a message of type `member` in the group (`{\"add\", \"remove\", \"by\"}`): "
                       "the added and the removed see it too, and nobody gets a message from before their join or "
                       "after their removal. Crossing group_write_limit switches the mode, announced by a message "
                       "of type `mode`.",
        "parameters": [_query("group", "The group id.", _INT64_ID),
                       _query("uid", "The acting user: the owner or an admin (default: the backend, as the owner).",
                              _INT64_ID, required=False)],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "add": {"type": "array", "items": _INT64_ID},
            "remove": {"type": "array", "items": _INT64_ID},
            "admins": {"type": "array", "items": _INT64_ID,
                       "description": "Members made admins."}}}}}},
        "responses": {"200": _reply("The group after the change.", {"type": "object", "properties": {
            "members": {"type": "integer"}, "mode": {"type": "string", "enum": ["write", "read"]}}}),
            "400": _error_response("A malformed list."),
            "403": _error_response("`uid` is not the owner or an admin."),
            "404": _error_response("No such group."),
            "409": _error_response("More members than group_max_members, removing the owner, an admin who is not a member."),
            "503": _IM_ERRORS["503"]},
    }},
}
_PATHS.update(_IM_PATHS)


_COMPONENTS = {
    "schemas": {
        "Envelope": {
            "type": "object",
            "required": ["code", "message", "data"],
            "properties": {
                "code": {"type": "integer", "description": "0 on success; non-zero (by default -HTTP status) on error."},
                "message": {"type": "string", "description": "Empty on success; says what was wrong otherwise."},
                "data": {"description": "The result; null on error."},
            },
        },
        "Error": {
            "type": "object",
            "required": ["code", "message", "data"],
            "properties": {
                "code": {"type": "integer", "not": {"const": 0}, "example": -400},
                "message": {"type": "string", "example": "missing parameter 'operation'"},
                "data": {"type": "null"},
            },
        },
        "Msg": {
            "type": "object",
            "description": "An inbox entry (docs/im.md): `seq` is the owner's, `content` any JSON.",
            "properties": {
                "seq": {"type": "integer"}, "msg_id": {"type": "string"}, "conv": {"type": "string"},
                "from": {"type": "integer"}, "to": {"type": "integer"}, "type": {"type": "string"},
                "content": {}, "ts": {"type": "integer"}, "cmid": {"type": "string"},
            },
        },
        "Session": {
            "type": "object",
            "properties": {
                "conn_id": {"type": "integer"},
                "mid": {"type": "integer"},
                "key": {"type": "string"},
                "server": {"type": "string"},
                "platform": {"type": "string"},
                "room_id": {"type": "string"},
                "connected_at": {"type": "number", "description": "Unix time, seconds."},
            },
        },
    },
    "responses": {
        "BadRequest": _error_response("A parameter or the body is missing or wrong; `message` names it."),
        "NotFound": _error_response("No such route (for the demo routes: the node runs without demo = true)."),
        "TooLarge": _error_response("The request body exceeds the node's max_http_body."),
    },
}


def openapi_document(demo: bool = True, scopes: Callable[[str, str], str | None] | None = None) -> dict[str, Any]:
    """A fresh copy of the document; ``demo=False`` leaves out the demo-only routes. ``scopes(method,
    path)``, when given, is the credential scope each route needs ("public" for none): the document
    then says which bearer scope each operation needs and that it may answer 401 and 403."""
    paths = {p: v for p, v in _PATHS.items() if demo or p not in DEMO_PATHS}
    doc = copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "imgate logic HTTP API",
                "version": imgate.__version__,
                "description": (
                    "goim-compatible push and online routes plus imgate's online queries. Every JSON reply is "
                    "the envelope `{\"code\": 0, \"message\": \"\", \"data\": ...}`; a bad request gets HTTP 4xx "
                    "with a non-zero `code` and a `message` saying what was wrong. Unknown paths answer 404, a "
                    "known path with another method 405 (with `Allow`), a body over the limit 413."
                ),
            },
            "tags": [
                {"name": "push", "description": "goim push routes; the message is the raw request body."},
                {"name": "online", "description": "goim online counts."},
                {"name": "query", "description": "Sessions and counts."},
                {"name": "service", "description": "Document, metrics, health."},
                {"name": "demo", "description": "The browser demo page."},
                {"name": "im", "description": "IM for backends: send as a user, sync an inbox, conversations."},
            ],
            "paths": paths,
            "components": _COMPONENTS,
        }
    )
    if scopes is not None:
        doc["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (imgate apikey create) or an API JWT with a `scope` claim."}}
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                scope = scopes(method.upper(), path)
                if scope is None or scope == "public":
                    op["security"] = []
                    continue
                op["security"] = [{"bearer": [scope]}]
                op["responses"]["401"] = _error_response("No credential, or an unknown, revoked or expired one.")
                op["responses"]["403"] = _error_response(f"The credential lacks the `{scope}` scope.")
    return doc


OPENAPI: dict[str, Any] = openapi_document(demo=True)
