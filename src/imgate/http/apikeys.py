"""Credentials for the HTTP API: API keys with scopes, and JWTs with a scope claim.

A caller sends ``Authorization: Bearer <credential>``. Each route declares the scope it needs
(``Router.add(..., scope=...)``); :class:`ApiAuth` answers 401 when the credential is missing or
unknown and 403 when it lacks the scope. ``admin`` grants every scope.

API keys look like ``imk_<id>_<secret>``. Only the SHA-256 of the whole key is stored (the key has
192 random bits, so a plain hash is enough: there is nothing to guess from it), in
``<data_dir>/apikeys.json`` (mode 0600), managed with ``imgate apikey create|list|revoke``. A running
node re-reads the file when it changes (checked at most once a second), so a revoked key stops working
within a second without a restart.

A JWT credential is HS256-signed with the node's ``jwt_secret`` and carries ``scope`` (a space
separated string or a list) and ``exp`` (no more than ``api_jwt_max_ttl`` ahead).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgate.http.messages import HttpError

__all__ = ["ApiAuth", "KeyStore", "SCOPES", "APIKEYS_FILE", "PREFIX"]

APIKEYS_FILE = "apikeys.json"
PREFIX = "imk_"
#: scopes a credential may carry; "admin" grants all of them
SCOPES = ("push", "im", "query", "metrics", "admin")
_RELOAD_EVERY = 1.0      # seconds between checks of the key file
_VERIFIED_MAX = 4096     # credentials remembered as verified (cleared when the file changes)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes) -> list[str]:
    out = list(dict.fromkeys(scopes))
    bad = [s for s in out if s not in SCOPES]
    if bad or not out:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {', '.join(bad) or 'none'}")
    return out


@dataclass
class KeyRecord:
    id: str
    name: str
    scopes: list[str]
    sha256: str = field(repr=False)
    created: float = 0.0


class KeyStore:
    """The API keys of one data dir (``<data_dir>/apikeys.json``)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir) / APIKEYS_FILE

    def load(self) -> list[KeyRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise ValueError(f"{self.path} is not valid JSON: {e}") from None
        return [KeyRecord(**r) for r in raw.get("keys", [])]

    def _save(self, records: list[KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [asdict(r) for r in records]}, f, indent=1)
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one

    def create(self, name: str, scopes) -> tuple[KeyRecord, str]:
        """A new key: its record and the key itself (shown once; only its hash is kept)."""
        scopes = check_scopes(scopes)
        records = self.load()
        kid = secrets.token_hex(4)
        while any(r.id == kid for r in records):
            kid = secrets.token_hex(4)
        token = f"{PREFIX}{kid}_{secrets.token_urlsafe(24)}"
        rec = KeyRecord(kid, name or "", scopes, _digest(token), time.time())
        self._save(records + [rec])
        return rec, token

    def revoke(self, kid: str) -> bool:
        records = self.load()
        kept = [r for r in records if r.id != kid]
        if len(kept) == len(records):
            return False
        self._save(kept)
        return True


class ApiAuth:
    """Checks ``Authorization: Bearer ...`` against the key store (and JWTs, given a secret).

    ``mode`` "key" checks; "none" lets everything through (the node warns at start). ``extra`` maps
    in-memory keys to scopes (the demo page's key, which is never written to disk).
    """

    def __init__(self, mode: str = "key", store: KeyStore | None = None, *, jwt_secret: str = "",
                 jwt_max_ttl: float = 86400.0, clock=time.monotonic):
        if mode not in ("key", "none"):
            raise ValueError(f"api_auth must be 'key' or 'none', got {mode!r}")
        self.open = mode == "none"
        self.store = store
        self.jwt_secret = jwt_secret
        self.jwt_max_ttl = jwt_max_ttl
        self._clock = clock
        self.extra: dict[str, frozenset] = {}
        self._hashes: dict[str, frozenset] = {}
        # "Bearer <key>" header value -> scopes, so a hash is not made per request (cleared, never
        # replaced, when the key file changes: the guards hold this very dict)
        self._verified: dict[str, frozenset] = {}
        self._stamp = None
        self._next_check = 0.0
        self._next_forced = 0.0
        self.counters = {"api_auth_failures": 0, "api_scope_denials": 0}
        self._reload()

    def add_key(self, token: str, scopes) -> None:
        self.extra[token] = frozenset(check_scopes(scopes))

    def _reload(self) -> None:
        if self.store is None:
            return
        try:
            st = os.stat(self.store.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._hashes = {r.sha256: frozenset(r.scopes) for r in self.store.load()} if stamp else {}
            self._verified.clear()
            self._stamp = stamp

    def _fresh(self) -> None:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + _RELOAD_EVERY
            self._reload()

    def scopes_of(self, token: str) -> frozenset | None:
        """The scopes ``token`` grants, or None when it is not a valid credential."""
        self._fresh()
        found = self.extra.get(token)
        if found is None and token.startswith(PREFIX):
            digest = _digest(token)
            found = self._hashes.get(digest)
            now = self._clock()
            if found is None and now >= self._next_forced:
                # perhaps a key made a moment ago: look at the file now (at most ten times a second,
                # however many unknown keys arrive)
                self._next_forced = now + 0.1
                self._reload()
                found = self._hashes.get(digest)
        elif found is None and self.jwt_secret and token.count(".") == 2:
            found = self._jwt_scopes(token)   # never cached: it expires
        return found

    def _jwt_scopes(self, token: str) -> frozenset | None:
        import jwt

        try:
            claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"],
                                options={"require": ["exp", "scope"], "verify_sub": False})
        except jwt.PyJWTError:
            return None
        if claims["exp"] - time.time() > self.jwt_max_ttl:
            return None   # a credential that outlives the allowed maximum is no credential
        scope = claims["scope"]
        names = scope.split() if isinstance(scope, str) else scope if isinstance(scope, list) else []
        return frozenset(s for s in names if s in SCOPES) or None

    def check(self, headers: dict, scope: str) -> None:
        """Return when the request may use a route of ``scope``; else raise 401 or 403."""
        if self.open:
            return
        self._fresh()
        value = headers.get("authorization")
        if value is None or value[:7].lower() != "bearer ":
            self.counters["api_auth_failures"] += 1
            raise HttpError(401, "authentication required: send Authorization: Bearer <API key or token>",
                            headers={"WWW-Authenticate": "Bearer"})
        granted = self.scopes_of(value[7:].strip())
        if granted is not None and value[7:].startswith(PREFIX) and len(self._verified) < _VERIFIED_MAX:
            self._verified[value] = granted   # an API key, not a JWT (which expires)
        if granted is None:
            self.counters["api_auth_failures"] += 1
            raise HttpError(401, "the credential is unknown, revoked or expired",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if scope not in granted and "admin" not in granted:
            self.counters["api_scope_denials"] += 1
            raise HttpError(403, f"the credential lacks the '{scope}' scope")

    def guard(self, handler, scope: str):
        """``handler`` behind the check for ``scope`` (a plain callable: a coroutine handler's
        coroutine is returned as it is, so the HTTP server drives it exactly as before)."""
        if self.open:
            return handler
        from imgate.http._guard import ScopeGuard   # compiled: the usual request runs no Python frame

        return ScopeGuard(self, handler, scope)


def mint_api_token(secret: str, scopes, ttl: float = 3600.0) -> str:
    """A JWT credential for the HTTP API with ``scopes``, valid ``ttl`` seconds."""
    import jwt

    now = int(time.time())
    return jwt.encode({"scope": " ".join(check_scopes(scopes)), "iat": now, "exp": now + int(ttl)},
                      secret, algorithm="HS256")


def api_auth_from_config(config) -> ApiAuth:
    """The HTTP API's guard for a node's config (keys from ``<data_dir>/apikeys.json``)."""
    import logging

    if config.api_auth == "none":
        logging.getLogger("imgate.auth").warning(
            "api_auth = \"none\": the HTTP API is open to anyone who reaches %s (push to every user, "
            "read every session)", config.http)
    return ApiAuth(config.api_auth, KeyStore(config.data_dir), jwt_secret=config.jwt_secret,
                   jwt_max_ttl=config.api_jwt_max_ttl)
