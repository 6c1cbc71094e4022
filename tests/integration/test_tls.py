"""TLS end to end: wss://, goim TCP over TLS and HTTPS with `imgate cert dev`'s CA, with imgate.client
and curl; a certificate reload (what SIGHUP does) keeps the open connections."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import urllib.request

import pytest

from imgate import client as imclient

from helpers import run
from nodeutil import NodeThread

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="imgate cert dev needs openssl")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from imgate.certs import make_dev_certs

    return make_dev_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def node(certs):
    n = NodeThread(tls_cert=certs["cert"], tls_key=certs["key"], wss="127.0.0.1:0", tls_tcp="127.0.0.1:0",
                   http_tls=True).start()
    yield n
    n.stop()


def trusting(certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certs["ca_cert"])


def https(node, certs, method, path, body=None):
    req = urllib.request.Request(f"https://127.0.0.1:{node.node.http_port}{path}", data=body, method=method,
                                 headers={"Authorization": f"Bearer {node.api_key}"})
    with urllib.request.urlopen(req, timeout=10, context=trusting(certs)) as resp:
        return resp.status, json.loads(resp.read())


def peer_cert(port, certs) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with trusting(certs).wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


def test_wss_tls_tcp_and_https_end_to_end(node, certs):
    p = node.node.proxy

    async def go():
        loop = asyncio.get_running_loop()
        ws = await imclient.connect(f"wss://localhost:{p.wss_port}/sub", mid=601, room_id="tls://1",
                                    ssl=trusting(certs), heartbeat=None)
        tcp = await imclient.connect(f"tls://localhost:{p.tls_tcp_port}", mid=602, room_id="tls://1",
                                     ssl=trusting(certs), heartbeat=None)
        assert await ws.heartbeat() == 2 and await tcp.heartbeat() == 2
        status, reply = await loop.run_in_executor(
            None, https, node, certs, "POST", "/goim/push/room?operation=1000&type=tls&room=1", b"secret")
        assert (status, reply["code"]) == (200, 0)
        for c in (ws, tcp):
            got = await c.recv(timeout=5)
            assert (got.op, got.body) == (1000, b"secret")
        await ws.close()
        await tcp.close()

    run(go())


def test_curl_with_the_dev_ca(node, certs):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl")
    out = subprocess.run([curl, "-sS", "--cacert", certs["ca_cert"], f"https://localhost:{node.node.http_port}/healthz"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["code"] == 0


def test_a_client_that_does_not_trust_the_ca_is_refused(node):
    async def go():
        with pytest.raises(ssl.SSLCertVerificationError):
            await imclient.connect(f"wss://localhost:{node.node.proxy.wss_port}/sub", mid=603, heartbeat=None)

    run(go())


def test_a_certificate_reload_keeps_open_connections(node, certs):
    from imgate.certs import make_dev_certs

    p = node.node.proxy
    before = peer_cert(p.wss_port, certs)

    async def go():
        loop = asyncio.get_running_loop()
        c = await imclient.connect(f"wss://localhost:{p.wss_port}/sub", mid=611, room_id="tls://2",
                                   ssl=trusting(certs), heartbeat=None)
        make_dev_certs(certs["cert"].rsplit("/", 1)[0])   # a new server certificate, same CA
        assert node.call(_reload(node)) is True
        after = await loop.run_in_executor(None, peer_cert, p.wss_port, certs)
        assert after != before, "new handshakes use the new certificate"
        assert await c.heartbeat() == 1, "the connection opened before the reload still works"
        await loop.run_in_executor(
            None, https, node, certs, "POST", "/goim/push/room?operation=1000&type=tls&room=2", b"after reload")
        assert (await c.recv(timeout=5)).body == b"after reload"
        await c.close()

    run(go())


async def _reload(node):
    return node.node.reload_tls()


def test_sighup_reloads_the_certificate_of_a_running_serve(tmp_path):
    import os
    import signal
    import socket
    import sys
    from pathlib import Path

    from imgate.certs import make_dev_certs
    from imgate.config import dump_toml

    from polling import wait_until

    paths = make_dev_certs(tmp_path / "tls")

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    ports = [free_port() for _ in range(4)]
    conf = tmp_path / "imgate.toml"
    conf.write_text(dump_toml(dict(tcp=f"127.0.0.1:{ports[0]}", ws=f"127.0.0.1:{ports[1]}", http=f"127.0.0.1:{ports[2]}",
                                   wss=f"127.0.0.1:{ports[3]}", tls_cert=paths["cert"], tls_key=paths["key"],
                                   auth="none", data_dir=str(tmp_path / "data"))))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "imgate", "serve", "--config", str(conf)],
                            env=dict(os.environ, PYTHONPATH=str(root / "src")), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "is up" in proc.stdout.readline()
        before = peer_cert(ports[3], paths)
        make_dev_certs(tmp_path / "tls")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: peer_cert(ports[3], paths) != before, what="the new certificate served")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_internal_rpc_over_tls_pinned_to_the_cluster_ca(certs, tmp_path):
    from types import SimpleNamespace

    from imgate.certs import make_dev_certs
    from imgate.rpc import RpcClient, RpcServer
    from imgate.rpc import tls as rpc_tls
    from imgate.rpc.wire import RpcUnavailable

    cfg = SimpleNamespace(rpc_tls=True, tls_cert=certs["cert"], tls_key=certs["key"], rpc_tls_ca=certs["ca_cert"])
    other_ca = make_dev_certs(tmp_path / "other")   # another authority: its certificates are not the cluster's
    stranger = SimpleNamespace(rpc_tls=True, tls_cert=other_ca["cert"], tls_key=other_ca["key"],
                               rpc_tls_ca=other_ca["ca_cert"])

    async def go():
        srv = RpcServer("test.echo", {1000: lambda body: body})
        await srv.start("127.0.0.1", 0, ssl=rpc_tls.server_context(cfg))
        try:
            c = await RpcClient.connect("127.0.0.1", srv.port, "test.echo", ssl=rpc_tls.client_context(cfg))
            assert await c.call(1000, b"over tls") == b"over tls"
            c.close()
            with pytest.raises(RpcUnavailable):   # pinned to another CA: the server's certificate is refused
                await RpcClient.connect("127.0.0.1", srv.port, "test.echo", ssl=rpc_tls.client_context(stranger),
                                        connect_timeout=5)
            with pytest.raises(RpcUnavailable):   # plain TCP to a TLS listener
                await RpcClient.connect("127.0.0.1", srv.port, "test.echo", connect_timeout=2)
        finally:
            await srv.stop()

    run(go())
