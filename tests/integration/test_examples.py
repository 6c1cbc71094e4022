"""The README's walk-through works: a token from `imgate token`, the example client, a push by HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from imgate import client as imclient
from imgate.core import FrameDecoder, encode_frame
from helpers import free_port, run
from nodeutil import NodeThread, read_until_closed
from polling import wait_until_async

ROOT = Path(__file__).resolve().parents[2]


def test_readme_client_example(tmp_path):
    data_dir = tmp_path / "data"
    node = NodeThread(auth="jwt", data_dir=str(data_dir)).start()
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        token = subprocess.run(
            [sys.executable, "-m", "imgate", "token", "--user", "42", "--data-dir", str(data_dir)],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        assert token.count(".") == 2, token
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "client.py"), "--url", node.ws_url, "--token", token, "--count", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        first = proc.stdout.readline()
        assert "authenticated as user 42; room live://1000 has 1 online" in first, (first, proc.stderr.read())
        key = subprocess.run(
            [sys.executable, "-m", "imgate", "apikey", "create", "--scope", "push", "--data-dir", str(data_dir)],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        # the README's curl (a key made a moment ago is looked up in the file at once; polled all the same)
        from polling import wait_until

        wait_until(lambda: node.http("POST", "/goim/push/room?operation=1000&type=live&room=1000", b"hello",
                                     api_key=key)[0] == 200, what="the new key accepted")
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "push op=1000: hello" in out
    finally:
        node.stop()


def test_token_command_without_a_secret_says_what_to_do(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("IMGATE_JWT_SECRET", None)
    res = subprocess.run([sys.executable, "-m", "imgate", "token", "--user", "1", "--data-dir", str(tmp_path / "none")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "no JWT secret" in res.stderr


def test_serve_rejects_bad_flags():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run([sys.executable, "-m", "imgate", "serve", "--tcp", "localhost:99999"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "tcp: port 99999 is out of range" in res.stderr


def test_serve_stops_on_sigterm_telling_every_client_with_op6(tmp_path):
    """`imgate serve` on SIGTERM: every connected client gets op 6 {"reason": "shutdown", "reconnect":
    true} and then the end of its stream; the process exits 0."""
    ports = [free_port() for _ in range(3)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgate", "serve", "--auth", "none", "--tcp", f"127.0.0.1:{ports[0]}",
         "--ws", f"127.0.0.1:{ports[1]}", "--http", f"127.0.0.1:{ports[2]}", "--data-dir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "is up" in line, proc.stderr.read()
        raw = socket.create_connection(("127.0.0.1", ports[0]), timeout=30)
        raw.sendall(encode_frame(7, 1, json.dumps({"mid": 1, "key": "", "room_id": "live://1", "platform": "t",
                                                   "accepts": []}).encode()))

        async def go():
            ws = await imclient.connect(f"ws://127.0.0.1:{ports[1]}/sub", mid=2, room_id="live://1", heartbeat=None)
            # both are in the room once the ws client's heartbeat counts 2: the raw one is authenticated
            await wait_until_async(ws.heartbeat, equals=2, what="both clients to be in the room")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(imclient.ConnectionClosed):
                while True:
                    await ws.recv(timeout=30)
            assert ws.closed_reason == {"reason": "shutdown", "reconnect": True}

        run(go(), 60)
        frames = FrameDecoder().feed(read_until_closed(raw))
        raw.close()
        assert [f.op for f in frames] == [8, 6], [f.op for f in frames]
        assert json.loads(frames[1].body) == {"reason": "shutdown", "reconnect": True}
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
