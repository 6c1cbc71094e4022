"""Helpers of the IM tests: the one HTTP call helper and a real `imgate serve` process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clusterutil import RoleProcess
from helpers import free_port
from imgate.http.apikeys import KeyStore
from nodeutil import API_KEYS

# Every HTTP request of the IM tests goes through api(): credentials, when the API needs them,
# are added here and only here (the admin key the node's helper made, from nodeutil.API_KEYS).
API_HEADERS: dict[str, str] = {}


def api(base: str, method: str, path: str, body=None, timeout: float = 15.0):
    """(status, parsed JSON, or the raw bytes of another type) of one request to the HTTP API at
    ``base`` (``http://host:port``)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    headers = dict(API_HEADERS)
    if base in API_KEYS:
        headers["Authorization"] = f"Bearer {API_KEYS[base]}"
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
        API_KEYS[self.http_base] = KeyStore(conf["data_dir"]).create("tests", ["admin"])[1]

    @property
    def tcp_url(self) -> str:
        return f"tcp://127.0.0.1:{self.ports['tcp']}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports['ws']}/sub"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"


@pytest.fixture
def serve(tmp_path):
    """`serve(**config)` starts a real `imgate serve`; every one still running is killed (SIGKILL) at the end."""
    procs = []

    def make(**config):
        p = ServeProcess(tmp_path, **config)
        procs.append(p)
        return p.start()

    yield make
    for p in procs:
        p.kill()
