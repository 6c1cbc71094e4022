"""Authentication of a connection's first frame (op 7, goim's auth body).

goim's auth body is JSON::

    {"mid": 123, "key": "", "room_id": "live://1000", "platform": "web", "accepts": [1000, 1001],
     "token": "..."}

- :func:`parse_auth_body` checks the body's shape and returns its fields normalised.
- :class:`NoAuth` (``--auth none``) trusts the body as goim does: no token, ``mid`` is the user id.
- :class:`JwtAuth` (``--auth jwt``) requires ``token``, an HS256 JWT whose ``sub`` is the user id
  (a string of digits; an integer ``sub`` minted by another library is accepted too) and which carries
  ``exp`` no further than ``max_ttl`` seconds ahead (a token without ``exp`` would be valid for ever;
  ``require_exp=False`` accepts one). The user id comes from ``sub``; a non-zero ``mid`` in the body
  must equal it.
- :func:`mint_token` issues such a token; :func:`make_authenticator` picks the mode from the config.

Every refusal is an :class:`AuthError` whose message says what was wrong; the proxy sends it to the
client as the reason of its op-6 notice. Generating a connection key when the body's key is empty is the
caller's job (logic), not this module's.

Leniency, on purpose: ``mid`` may be a JSON integer or a string of ASCII digits (JavaScript clients
send large ids as strings); a missing ``mid`` is 0 (anonymous, as Go's JSON decoding of goim's body
gives). Missing or ``null`` ``key``, ``room_id``, ``platform``, ``token`` are empty strings and a missing
``accepts`` is empty, meaning every push operation. Unknown fields are ignored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

from imgate.auth._body import parse_plain

__all__ = [
    "AuthError",
    "Authenticator",
    "Identity",
    "JwtAuth",
    "MAX_AUTH_BODY",
    "NoAuth",
    "make_authenticator",
    "mint_token",
    "parse_auth_body",
]

#: largest auth body accepted, in bytes
MAX_AUTH_BODY = 8192
#: bounds of the string fields, in characters
MAX_KEY_LEN = 128
MAX_ROOM_ID_LEN = 256
MAX_PLATFORM_LEN = 64
MAX_ACCEPTS = 1024

_INT64_MAX = (1 << 63) - 1
_FIELDS = ("mid", "key", "room_id", "platform", "accepts", "token")
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1

_SECRET_HELP = "jwt auth needs a secret: set jwt_secret in the config or IMGATE_JWT_SECRET"


class AuthError(Exception):
    """The auth frame is refused; str(exc) says why (sent to the client in the op-6 notice)."""


@dataclass(frozen=True)
class Identity:
    """Who a connection is, once authenticated."""

    mid: int                      # user id
    key: str                      # connection key ("" = let the caller generate one)
    room_id: str                  # "" or "type://id"
    platform: str
    accepts: tuple[int, ...]      # push operations wanted; empty = all


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_user_id(value: Any, what: str) -> int:
    """An int, or a string of ASCII digits, in 0..2**63-1."""
    if _is_int(value):
        n = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        n = int(value)
    else:
        raise AuthError(f"{what} must be an integer, got {_show(value)}")
    if n < 0:
        raise AuthError(f"{what} must be >= 0, got {n}")
    if n > _INT64_MAX:
        raise AuthError(f"{what} {n} is out of range (max {_INT64_MAX})")
    return n


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _opt_str(obj: dict, name: str, limit: int) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AuthError(f"{name} must be a string, got {_show(value)}")
    if len(value) > limit:
        raise AuthError(f"{name} is {len(value)} characters long, the limit is {limit}")
    return value


def parse_auth_body(body: bytes | bytearray | memoryview) -> dict:
    """Validate goim's auth JSON and return its fields normalised.

    Returns ``{"mid": int, "key": str, "room_id": str, "platform": str, "accepts": tuple[int, ...],
    "token": str}``. Raises :class:`AuthError` naming the first rule broken.
    """
    if 0 < len(body) <= MAX_AUTH_BODY:  # the common case in C; anything unusual in Python, with its error
        fields = parse_plain(body if type(body) is bytes else bytes(body), MAX_KEY_LEN, MAX_ROOM_ID_LEN,
                             MAX_PLATFORM_LEN, MAX_ACCEPTS)
        if fields is not None:
            return dict(zip(_FIELDS, fields))
    return parse_json_body(body)


def parse_json_body(body: bytes | bytearray | memoryview) -> dict:
    """:func:`parse_auth_body` with the json module, for any body: what the C fast path must agree with."""
    size = len(body)
    if size > MAX_AUTH_BODY:
        raise AuthError(f"auth body is {size} bytes, the limit is {MAX_AUTH_BODY}")
    if size == 0:
        raise AuthError("auth body is empty")
    try:
        obj = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        raise AuthError("auth body is not JSON") from None
    except RecursionError:
        raise AuthError("auth body is not JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise AuthError("auth body must be a JSON object")

    mid = obj.get("mid")
    mid = 0 if mid is None else _parse_user_id(mid, "mid")

    key = _opt_str(obj, "key", MAX_KEY_LEN)
    for ch in key:
        if ch == "," or not ("!" <= ch <= "~"):
            raise AuthError("key must be printable ASCII without spaces or commas")

    room_id = _opt_str(obj, "room_id", MAX_ROOM_ID_LEN)
    if room_id:
        kind, sep, rid = room_id.partition("://")
        if not sep or not kind or not rid:
            raise AuthError(f"room_id must look like type://id, got {_show(room_id)}")

    platform = _opt_str(obj, "platform", MAX_PLATFORM_LEN)

    raw_accepts = obj.get("accepts")
    if raw_accepts is None:
        accepts: tuple[int, ...] = ()
    else:
        if not isinstance(raw_accepts, list):
            raise AuthError(f"accepts must be a list of integers, got {_show(raw_accepts)}")
        if len(raw_accepts) > MAX_ACCEPTS:
            raise AuthError(f"accepts has {len(raw_accepts)} entries, the limit is {MAX_ACCEPTS}")
        seen: dict[int, None] = {}
        for op in raw_accepts:
            if not _is_int(op):
                raise AuthError(f"accepts must be a list of integers, found {_show(op)}")
            if not _INT32_MIN <= op <= _INT32_MAX:
                raise AuthError(f"accepts: operation {op} is out of the int32 range")
            seen[op] = None
        accepts = tuple(seen)   # duplicates dropped, order kept

    token = obj.get("token")
    if token is None:
        token = ""
    elif not isinstance(token, str):
        raise AuthError(f"token must be a string, got {_show(token)}")

    return {"mid": mid, "key": key, "room_id": room_id, "platform": platform,
            "accepts": accepts, "token": token}


def _identity(fields: dict, mid: int) -> Identity:
    return Identity(mid=mid, key=fields["key"], room_id=fields["room_id"],
                    platform=fields["platform"], accepts=fields["accepts"])


class Authenticator:
    """Turns an op-7 body into an :class:`Identity` or raises :class:`AuthError`. The identity's ``mid``
    is an int in 0..2^63-1 (0: anonymous); logic refuses the connection of any other."""

    mode = ""

    def authenticate(self, body: bytes) -> Identity:
        raise NotImplementedError


class NoAuth(Authenticator):
    """goim's behaviour: the body is trusted as it is; ``mid`` is the user id, no token needed.

    A ``token`` field, if any, is ignored (its type is still checked).
    """

    mode = "none"

    def authenticate(self, body: bytes) -> Identity:
        fields = parse_auth_body(body)
        return _identity(fields, fields["mid"])

    def __repr__(self) -> str:
        return "NoAuth()"


def _jwt():
    try:
        import jwt
    except ImportError:  # pragma: no cover - PyJWT is a declared dependency
        raise RuntimeError("jwt auth needs PyJWT: pip install 'PyJWT>=2.8'") from None
    return jwt


class JwtAuth(Authenticator):
    """HS256 JWT in the body's ``token``; the user id is the ``sub`` claim.

    ``exp`` is required (unless ``require_exp`` is False) and may be at most ``max_ttl`` seconds ahead
    (None: no maximum); it is honoured with ``leeway`` seconds of clock skew, as are ``nbf`` and
    ``iat``. ``sub`` is required; it is a string of digits (PyJWT >= 2.10 mints and expects strings)
    or, from other minting libraries, a JSON integer.
    """

    mode = "jwt"

    def __init__(self, secret: str, leeway: float = 0, algorithms: Iterable[str] = ("HS256",), *,
                 require_exp: bool = True, max_ttl: float | None = 7 * 86400.0):
        if not secret:
            raise ValueError(_SECRET_HELP)
        self._jwt = _jwt()
        self._secret = secret
        self.leeway = float(leeway)
        self.algorithms = list(algorithms)
        if not self.algorithms:
            raise ValueError("jwt auth needs at least one algorithm")
        self.max_ttl = max_ttl
        # sub is checked here (string of digits or integer), not by PyJWT, which rejects integers
        self._options = {"verify_sub": False, "require": ["sub", "exp"] if require_exp else ["sub"]}

    def __repr__(self) -> str:  # never shows the secret
        return f"JwtAuth(algorithms={self.algorithms!r}, leeway={self.leeway})"

    def verify_token(self, token: str) -> int:
        """Check a token alone; return its user id (``sub``)."""
        jwt = self._jwt
        try:
            claims = jwt.decode(token, self._secret, algorithms=self.algorithms,
                                leeway=self.leeway, options=self._options)
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token signature") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token is not valid yet (nbf)") from None
        except jwt.InvalidIssuedAtError:
            raise AuthError("token is issued in the future (iat)") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token has no {e.claim} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"token algorithm is not allowed (expected {', '.join(self.algorithms)})") from None
        except jwt.DecodeError:
            raise AuthError("token is malformed (not a JWT)") from None
        except jwt.InvalidTokenError as e:
            raise AuthError(f"invalid token: {e}") from None
        except jwt.PyJWTError as e:  # e.g. a key that does not suit the algorithm
            raise AuthError(f"token cannot be verified: {e}") from None
        exp = claims.get("exp")
        if self.max_ttl is not None and isinstance(exp, (int, float)) and exp - time.time() > self.max_ttl + self.leeway:
            raise AuthError(f"token lives too long: exp is more than {self.max_ttl:g} s ahead")
        sub = claims.get("sub")
        try:
            return _parse_user_id(sub, "token subject")
        except AuthError:
            raise AuthError(f"token subject must be a user id (digits), got {_show(sub)}") from None

    def authenticate(self, body: bytes) -> Identity:
        fields = parse_auth_body(body)
        token = fields["token"]
        if not token:
            raise AuthError("auth body has no token (jwt auth is on)")
        user_id = self.verify_token(token)
        mid = fields["mid"]
        if mid and mid != user_id:
            raise AuthError(f"token subject {user_id} does not match mid {mid}")
        return _identity(fields, user_id)


def mint_token(secret: str, user_id: int, ttl: float = 86400, now: float | None = None) -> str:
    """An HS256 token for ``user_id`` (``sub`` as a string), valid for ``ttl`` seconds from ``now``."""
    if not secret:
        raise ValueError(_SECRET_HELP)
    if not _is_int(user_id) or user_id < 0:
        raise ValueError(f"user_id must be an integer >= 0, got {user_id!r}")
    issued = time.time() if now is None else float(now)
    claims = {"sub": str(user_id), "iat": int(issued), "exp": int(issued + ttl)}
    return _jwt().encode(claims, secret, algorithm="HS256")


def make_authenticator(mode: str, secret: str = "", *, require_exp: bool = True,
                       max_ttl: float | None = 7 * 86400.0) -> Authenticator:
    """``"jwt"`` -> :class:`JwtAuth` (needs ``secret``), ``"none"`` -> :class:`NoAuth`."""
    m = (mode or "").strip().lower()
    if m == "jwt":
        return JwtAuth(secret, require_exp=require_exp, max_ttl=max_ttl)
    if m == "none":
        return NoAuth()
    raise ValueError(f"unknown auth mode {mode!r}: expected jwt or none")
