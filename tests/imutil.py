"""Helpers of the IM tests: the one HTTP call helper and a real `imgate serve` process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from clusterutil import RoleProcess, free_port

try:  # API credentials, where the HTTP API asks for them
    from imgate.http.apikeys import KeyStore
except ImportError:  # pragma: no cover - a tree whose API is open
    KeyStore = None


def admin_key(data_dir) -> str | None:
    """An admin API key of the node whose data dir is ``data_dir`` (None where the API has no keys)."""
    return KeyStore(data_dir).create("im-tests", ["admin"])[1] if KeyStore is not None else None


def api(base: str, method: str, path: str, body=None, timeout: float = 15.0, key: str | None = None):
    """(status, parsed JSON, or the raw bytes of another type) of one request to the HTTP API at
    ``base`` (``http://host:port``); every HTTP call of the IM tests comes through here. ``key``: the
    API credential to send."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in ctype else raw)


class ServeProcess(RoleProcess):
    """`imgate serve` as a real process on free loopback ports, its data in ``workdir/data``."""

    def __init__(self, workdir: Path, **config):
        self.ports = {k: free_port() for k in ("tcp", "ws", "http")}
        conf = dict(auth="none", data_dir=str(workdir / "data"), server_id="im-serve",
                    **{k: f"127.0.0.1:{p}" for k, p in self.ports.items()})
        conf.update(config)
        super().__init__("serve", "serve", conf, workdir)
        self.api_key = admin_key(conf["data_dir"])

    @property
    def tcp_url(self) -> str:
        return f"tcp://127.0.0.1:{self.ports['tcp']}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports['ws']}/sub"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"
