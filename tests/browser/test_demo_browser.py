"""The demo page in a real browser: headless Debian Chromium (driven by Selenium) against a real imgate node.

The node runs in a background thread on its own uvloop loop. The browser opens the page the node serves,
connects over WebSocket (goim auth, op 8, heartbeats with the room's online count), pushes to its room
through the HTTP API and shows what arrives; the test pushes over HTTP too.

Chromium and chromedriver come from Debian (scripts/install-browser.sh installs them when missing);
Selenium is pointed at them explicitly so that Selenium Manager never tries to download anything.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from nodeutil import NodeThread
from polling import wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from imgate.config import Config

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


# ---------------------------------------------------------------------------------------------------------
# fixtures: browser binaries, a node, a driver


@pytest.fixture(scope="session")
def browser_binaries():
    """Debian's chromium + chromium-driver, installed by scripts/install-browser.sh when missing."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        res = subprocess.run(["bash", str(ROOT / "scripts" / "install-browser.sh")], capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, f"scripts/install-browser.sh failed:\n{res.stdout}\n{res.stderr}"
    assert Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), "chromium/chromedriver missing after install"
    return CHROMIUM, CHROMEDRIVER


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NodeRunner(NodeThread):
    """The real node on its own uvloop loop in a daemon thread (tests/nodeutil.py)."""


def start_node(tmp_path: Path, auth: str, demo: bool, **extra) -> NodeRunner:
    tcp, ws, http = free_ports(3)
    config = Config(
        tcp=f"127.0.0.1:{tcp}",
        ws=f"127.0.0.1:{ws}",
        http=f"127.0.0.1:{http}",
        auth=auth,
        jwt_secret="browser-test-secret-of-at-least-32-bytes" if auth == "jwt" else "",
        demo=demo,
        data_dir=str(tmp_path / "data"),
        online_interval=0.1,
        server_id="browser-test",
        **extra,
    ).validate()
    return NodeRunner(config).start()


@pytest.fixture
def driver(browser_binaries, tmp_path):
    chromium, chromedriver = browser_binaries
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    d = webdriver.Chrome(service=service, options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


# ---------------------------------------------------------------------------------------------------------
# page helpers


def text(d, element_id: str) -> str:
    return d.find_element(By.ID, element_id).text


def wait_for(d, what: str, cond, every=None):
    """Wait (the polling helper, its generous deadline) until cond(d) is truthy; `every(d)` runs every
    few polls (e.g. clicking a button). A timeout shows the page's status and protocol log."""
    polls = [0]

    def check():
        polls[0] += 1
        try:
            value = cond(d)
        except Exception:  # element not there yet, stale, ...
            value = None
        if not value and every is not None and polls[0] % 6 == 1:
            every(d)
        return value

    try:
        return wait_until(check, what=what, interval=0.05)
    except AssertionError as e:
        log = "\n".join(li.text for li in d.find_elements(By.CSS_SELECTOR, "#log li")[:20])
        raise AssertionError(f"{e}; #status={text(d, 'status')!r}\nprotocol log:\n{log}") from None


def messages(d) -> list[tuple[str, str]]:
    """(op, body) of every message shown in #messages."""
    out = []
    for li in d.find_elements(By.CSS_SELECTOR, "#messages li"):
        out.append((li.get_attribute("data-op"), li.find_element(By.CSS_SELECTOR, ".body").text))
    return out


def open_page(d, node: NodeRunner) -> None:
    d.get(node.http_base + "/")
    wait_until(lambda: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1",
               what="the page to be ready", ignore=(Exception,))


def connect_and_authenticate(d) -> None:
    d.find_element(By.ID, "connect-btn").click()
    wait_for(d, "#status to say authenticated", lambda d: text(d, "status") == "authenticated")


def wait_online(d, at_least: int) -> int:
    click_heartbeat = lambda d: d.find_element(By.ID, "heartbeat-btn").click()  # noqa: E731
    return wait_for(
        d, f"#online >= {at_least}",
        lambda d: int(text(d, "online")) if int(text(d, "online")) >= at_least else None,
        every=click_heartbeat,
    )


def severe_console_errors(d) -> list[str]:
    try:
        entries = d.get_log("browser")
    except Exception:  # pragma: no cover - logging capability not supported
        return []
    return [e["message"] for e in entries if e.get("level") == "SEVERE" and "favicon.ico" not in e["message"]]


# ---------------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("auth", ["none", "jwt"])
def test_demo_page_connects_pushes_and_receives(driver, tmp_path, auth):
    node = start_node(tmp_path, auth=auth, demo=True)
    try:
        d = driver
        open_page(d, node)
        assert text(d, "status").startswith("closed:")
        ws_url = d.find_element(By.ID, "ws-url").get_attribute("value")
        assert ws_url.startswith("ws://") and ws_url.endswith(f":{node.config.addr('ws')[1]}/sub"), ws_url
        assert d.find_element(By.ID, "room").get_attribute("value") == "live://1000"

        connect_and_authenticate(d)
        if auth == "jwt":  # the page asked the node for a token (POST /demo/token) and used it
            assert d.find_element(By.ID, "token").get_attribute("value").count(".") == 2
        assert wait_online(d, 1) >= 1  # op 3 body: this connection is in live://1000

        # push from the page: textarea -> POST /goim/push/room -> back over the WebSocket
        message = "hello from the browser, ünïcødé ✓"
        d.find_element(By.ID, "message").send_keys(message)
        d.find_element(By.ID, "push-btn").click()
        wait_for(d, "the page's own push in #messages", lambda d: ("1000", message) in messages(d))
        assert text(d, "push-result") == "pushed"

        # push from the test over HTTP, another operation
        status, reply = node.http("POST", "/goim/push/room?operation=1001&type=live&room=1000", "from the test".encode())
        assert status == 200 and reply["code"] == 0, reply
        wait_for(d, "the test's push in #messages", lambda d: ("1001", "from the test") in messages(d))
        li = d.find_elements(By.CSS_SELECTOR, "#messages li")[-1]
        assert li.get_attribute("data-op") == "1001" and li.get_attribute("data-seq") is not None

        # change room (op 12 -> 13): pushes to the old room no longer arrive, the new room's do
        room = d.find_element(By.ID, "room")
        room.clear()
        room.send_keys("live://2000")
        d.find_element(By.ID, "join-btn").click()
        wait_for(d, "op 13 for live://2000", lambda d: text(d, "current-room") == "live://2000")
        node.http("POST", "/goim/push/room?operation=1002&type=live&room=1000", b"old room")
        node.http("POST", "/goim/push/room?operation=1003&type=live&room=2000", b"new room")
        wait_for(d, "the new room's push", lambda d: ("1003", "new room") in messages(d))
        assert ("1002", "old room") not in messages(d)

        # disconnect from the page
        d.find_element(By.ID, "disconnect-btn").click()
        wait_for(d, "#status closed", lambda d: text(d, "status").startswith("closed:"))
        assert severe_console_errors(d) == []
        d.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        node.stop()


def test_demo_page_without_demo_config(driver, tmp_path):
    """With demo off, /demo/config is 404: the user types the WebSocket URL and mid (auth none)."""
    node = start_node(tmp_path, auth="none", demo=False)
    try:
        d = driver
        open_page(d, node)
        assert "type the WebSocket URL" in text(d, "config-note")
        ws = d.find_element(By.ID, "ws-url")
        ws.clear()
        ws.send_keys(f"ws://127.0.0.1:{node.config.addr('ws')[1]}/sub")
        mid = d.find_element(By.ID, "mid")
        mid.clear()
        mid.send_keys("4242")
        connect_and_authenticate(d)
        assert wait_online(d, 1) >= 1
        status, reply = node.http("GET", "/session?uid=4242")
        assert status == 200 and len(reply["data"]) == 1 and reply["data"][0]["platform"] == "web", reply
        status, reply = node.http("POST", "/goim/push/mids?operation=1000&mids=4242", b"to mid 4242")
        assert status == 200, reply
        node.http("POST", "/goim/push/room?operation=1000&type=live&room=1000", b"to the room")
        wait_for(d, "the room push", lambda d: ("1000", "to the room") in messages(d))
    finally:
        node.stop()
    # the node went away: the page says the connection closed
    wait_for(d, "#status closed after the node stopped", lambda d: text(d, "status").startswith("closed:"))


# ---------------------------------------------------------------------------------------------------------
# the chat demo (/chat, protocol in the ES module /imgate-im.js): two users in two tabs


def chat_lines(d) -> list[tuple[str, str]]:
    """(from, text) of every message shown in the open conversation."""
    return [(li.get_attribute("data-from"), li.find_element(By.CSS_SELECTOR, ".body").text)
            for li in d.find_elements(By.CSS_SELECTOR, "#chat li")]


def unread_badge(d, peer: int) -> int | None:
    for li in d.find_elements(By.CSS_SELECTOR, "#convs li"):
        if li.get_attribute("data-peer") == str(peer):
            return int(li.find_element(By.CSS_SELECTOR, ".unread").get_attribute("textContent"))
    return None


def chat_online(d) -> None:
    d.find_element(By.ID, "connect-btn").click()
    wait_for(d, "#status open", lambda d: text(d, "status") == "open")


def chat_send(d, message: str) -> None:
    box = d.find_element(By.ID, "text")
    box.send_keys(message)
    d.find_element(By.ID, "send-btn").click()
    wait_for(d, f"{message!r} in the sender's chat", lambda d: message in [t for _, t in chat_lines(d)])


def two_chat_tabs(d, node, query_a: str = "") -> tuple:
    """The chat page as user 101 (this tab) and as user 202 (a new tab, left current), both online."""
    tabs = []
    for i, url in enumerate((f"/chat?mid=101{query_a}", "/chat?mid=202")):
        if i:
            d.switch_to.new_window("tab")
        tabs.append(d.current_window_handle)
        d.get(node.http_base + url)
        wait_for(d, "the chat page", lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        chat_online(d)
    return tuple(tabs)


@pytest.mark.parametrize("auth", ["none", "jwt"])
def test_chat_demo_two_users_offline_and_back_with_unread_counts(driver, tmp_path, auth):
    node = start_node(tmp_path, auth=auth, demo=True)
    try:
        d = driver
        tab_a, tab_b = two_chat_tabs(d, node, "&peer=202")

        d.switch_to.window(tab_a)  # A opens the conversation with B and writes
        d.find_element(By.ID, "open-btn").click()
        chat_send(d, "hello B")

        d.switch_to.window(tab_b)  # B sees the conversation with one unread message, then goes offline
        wait_for(d, "B's unread count of 1", lambda d: unread_badge(d, 101) == 1)
        d.find_element(By.ID, "disconnect-btn").click()
        wait_for(d, "B offline", lambda d: text(d, "status").startswith("offline"))

        d.switch_to.window(tab_a)
        for m in ("while you were away", "ünïcødé ✓"):
            chat_send(d, m)
        assert all(frm == "101" for frm, _ in chat_lines(d))

        d.switch_to.window(tab_b)  # back online: what was missed arrives, counted as unread
        assert unread_badge(d, 101) == 1
        chat_online(d)
        wait_for(d, "B's unread count of 3", lambda d: unread_badge(d, 101) == 3)
        d.find_element(By.CSS_SELECTOR, "#convs li[data-peer='101']").click()
        wait_for(d, "the three messages in order", lambda d: chat_lines(d) == [
            ("101", "hello B"), ("101", "while you were away"), ("101", "ünïcødé ✓")])
        wait_for(d, "B's unread count back to 0", lambda d: unread_badge(d, 101) == 0)

        d.switch_to.window(tab_a)  # A is told B read them (a msg of type "read")
        wait_for(d, "A's messages marked read", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat li.mine.read")) == 3)
        status, reply = node.http("GET", "/im/conversations?uid=202")
        assert status == 200 and reply["data"][0]["unread"] == 0 and reply["data"][0]["peer"] == 101, reply
        assert severe_console_errors(d) == []
        d.switch_to.window(tab_b)
        assert severe_console_errors(d) == []
    finally:
        node.stop()


def group_lines(d) -> list[tuple[str, str]]:
    """(from, text) of the messages shown in the open conversation, notices ("member", "mode") as
    ("", their text)."""
    return [("", li.text) if "system" in li.get_attribute("class") else
            (li.get_attribute("data-from"), li.find_element(By.CSS_SELECTOR, ".body").text)
            for li in d.find_elements(By.CSS_SELECTOR, "#chat li")]


def group_send(d, message: str) -> None:
    d.find_element(By.ID, "text").send_keys(message)
    d.find_element(By.ID, "send-btn").click()
    wait_for(d, f"{message!r} in the sender's chat", lambda d: message in [t for _, t in group_lines(d)])


def test_chat_demo_group_in_both_modes(driver, tmp_path):
    """A creates a group on the page and writes (write mode: inbox entries); the backend adds members
    so that it switches to read mode (timeline, room push); B writes while A is offline and A's page
    pulls it on return. Each page shows the conversation in order, notices included."""
    node = start_node(tmp_path, auth="none", demo=True, group_write_limit=3, group_hysteresis=1)
    try:
        d = driver
        tab_a, tab_b = two_chat_tabs(d, node)

        d.switch_to.window(tab_a)
        d.find_element(By.ID, "group-members").send_keys("202, 303")
        d.find_element(By.ID, "create-group-btn").click()
        # the h2 is shown upper case
        wait_for(d, "the new group open", lambda d: text(d, "title").lower().startswith("group ") or text(d, "error"))
        assert text(d, "error") == ""
        group = int(text(d, "title").split()[1])
        group_send(d, "hi group")
        status, reply = node.http("GET", f"/im/groups?group={group}")
        assert status == 200 and (reply["data"]["members"], reply["data"]["mode"]) == (3, "write"), reply

        d.switch_to.window(tab_b)  # B's list has the group with one unread message
        conv = f"#convs li[data-conv='g:{group}']"
        wait_for(d, "the group in B's list", lambda d: len(d.find_elements(By.CSS_SELECTOR, conv)) == 1)
        wait_for(d, "one unread", lambda d: d.find_element(By.CSS_SELECTOR, conv + " .unread")
                 .get_attribute("textContent") == "1")
        d.find_element(By.CSS_SELECTOR, conv).click()
        wait_for(d, "the creation and A's message", lambda d: group_lines(d) == [
            ("", "user 101 added 101, 202, 303"), ("101", "hi group")])

        # the backend adds two members: 5 > group_write_limit 3, the group switches to read mode
        status, reply = node.http("POST", f"/im/groups/members?group={group}", b'{"add": [404, 505]}')
        assert status == 200 and reply["data"] == {"members": 5, "mode": "read"}, reply
        group_send(d, "big now")  # read mode: back to the sender through the group's room

        d.switch_to.window(tab_a)
        wait_for(d, "A sees B's read-mode message", lambda d: ("202", "big now") in group_lines(d))
        d.find_element(By.ID, "disconnect-btn").click()
        wait_for(d, "A offline", lambda d: text(d, "status").startswith("offline"))

        d.switch_to.window(tab_b)
        group_send(d, "while you were away")

        d.switch_to.window(tab_a)  # back online: SYNC's groups says the group has news, the page pulls
        chat_online(d)
        wait_for(d, "the whole conversation on A's page", lambda d: group_lines(d) == [
            ("", "user 101 added 101, 202, 303"), ("101", "hi group"), ("", "user 101 added 404, 505"),
            ("", "the group switched to read mode (5 members)"), ("202", "big now"), ("202", "while you were away")])
        for tab in (tab_a, tab_b):
            d.switch_to.window(tab)
            assert severe_console_errors(d) == []
    finally:
        node.stop()
