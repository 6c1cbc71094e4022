// imgate demo page: a goim v2 client over WebSocket, written without any library or build step.
//
// Frame = 16-byte big-endian header (packLen int32, headerLen int16 = 16, ver int16 = 1, op int32,
// seq int32) + body. One frame per binary WebSocket message; op 9 carries a batch of whole frames.
"use strict";

(() => {
  const OP = {
    HEARTBEAT: 2, HEARTBEAT_REPLY: 3, SEND_MSG: 4, SEND_MSG_REPLY: 5, DISCONNECT: 6,
    AUTH: 7, AUTH_REPLY: 8, RAW: 9, CHANGE_ROOM: 12, CHANGE_ROOM_REPLY: 13,
  };
  const HEADER_LEN = 16;
  const PUSH_OP = 1000;
  const MAX_MESSAGES = 500;

  const $ = (id) => document.getElementById(id);
  const utf8 = new TextEncoder();
  const fromUtf8 = new TextDecoder("utf-8");

  let ws = null;            // the current WebSocket
  let seq = 0;              // sequence of our requests
  let heartbeatTimer = null;
  let heartbeatEveryMs = 30000; // goim clients beat every 30 s
  let demoAvailable = false; // GET /demo/config answered: POST /demo/token works too
  let apiKey = "";          // the node's demo API key (scope push), handed to loopback pages only
  let accepts = [];
  let closeReason = null;   // from an op-6 notice, shown when the socket closes
  let retryMs = null;       // a "busy" notice's retry_ms: reconnect after it when the socket closes
  let busyStreak = 0;       // busy answers in a row: each one waits a little longer (backoff)
  let retryTimer = null;
  let pendingRoom = null;   // asked for with op 12, confirmed by op 13

  // ---------------------------------------------------------------------------------------- frames

  function pack(op, body) {
    const bytes = typeof body === "string" ? utf8.encode(body) : (body || new Uint8Array(0));
    const buf = new ArrayBuffer(HEADER_LEN + bytes.length);
    const view = new DataView(buf);
    seq = (seq + 1) | 0;
    view.setInt32(0, HEADER_LEN + bytes.length);
    view.setInt16(4, HEADER_LEN);
    view.setInt16(6, 1);
    view.setInt32(8, op);
    view.setInt32(12, seq);
    new Uint8Array(buf, HEADER_LEN).set(bytes);
    return buf;
  }

  // Every whole frame in `buffer` (an ArrayBuffer), in order; throws on a malformed header.
  function unpack(buffer, offset = 0, end = buffer.byteLength) {
    const view = new DataView(buffer);
    const frames = [];
    while (offset < end) {
      if (end - offset < HEADER_LEN) throw new Error(`truncated frame header (${end - offset} bytes)`);
      const packLen = view.getInt32(offset);
      const headerLen = view.getInt16(offset + 4);
      if (headerLen !== HEADER_LEN) throw new Error(`bad headerLen ${headerLen}`);
      if (packLen < HEADER_LEN || offset + packLen > end) throw new Error(`bad packLen ${packLen}`);
      frames.push({
        ver: view.getInt16(offset + 6),
        op: view.getInt32(offset + 8),
        seq: view.getInt32(offset + 12),
        buffer,
        bodyStart: offset + HEADER_LEN,
        bodyEnd: offset + packLen,
      });
      offset += packLen;
    }
    return frames;
  }

  const bodyBytes = (f) => new Uint8Array(f.buffer, f.bodyStart, f.bodyEnd - f.bodyStart);
  const bodyText = (f) => fromUtf8.decode(bodyBytes(f));

  // ---------------------------------------------------------------------------------------- view

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function log(text) {
    const li = document.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    const list = $("log");
    list.prepend(li);
    while (list.children.length > 200) list.lastChild.remove();
  }

  function addMessage(f, cls) {
    const li = document.createElement("li");
    li.className = cls || "push";
    li.dataset.op = String(f.op);
    li.dataset.seq = String(f.seq);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `op ${f.op} · seq ${f.seq} · ${new Date().toLocaleTimeString()}`;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = bodyText(f);
    li.append(meta, body);
    const list = $("messages");
    list.append(li);
    while (list.children.length > MAX_MESSAGES) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  function setConnectedButtons(open) {
    $("disconnect-btn").disabled = !open;
    $("heartbeat-btn").disabled = !open;
    $("join-btn").disabled = !open;
  }

  // ---------------------------------------------------------------------------------------- protocol

  function send(op, body) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      log(`not connected: op ${op} not sent`);
      return false;
    }
    ws.send(pack(op, body));
    return true;
  }

  function heartbeat() {
    if (send(OP.HEARTBEAT)) log("op 2 heartbeat sent");
  }

  function startHeartbeats() {
    stopHeartbeats();
    heartbeat();
    heartbeatTimer = setInterval(heartbeat, heartbeatEveryMs);
  }

  function stopHeartbeats() {
    if (heartbeatTimer !== null) clearInterval(heartbeatTimer);
    heartbeatTimer = null;
  }

  function handleFrame(f) {
    switch (f.op) {
      case OP.AUTH_REPLY: {
        busyStreak = 0;
        setStatus("authenticated", "ok");
        const text = bodyText(f);
        log(`op 8 auth reply${text ? ": " + text : ""}`);
        try { // imgate's reply may say how often it wants heartbeats (seconds)
          const reply = JSON.parse(text);
          if (typeof reply.heartbeat === "number" && reply.heartbeat > 0) {
            heartbeatEveryMs = Math.max(1000, reply.heartbeat * 1000);
          }
        } catch (e) { /* goim's empty body */ }
        startHeartbeats();
        break;
      }
      case OP.HEARTBEAT_REPLY: {
        if (f.bodyEnd - f.bodyStart >= 4) {
          const count = new DataView(f.buffer, f.bodyStart, 4).getInt32(0);
          $("online").textContent = String(count);
          log(`op 3 heartbeat reply: ${count} online`);
        } else {
          log("op 3 heartbeat reply");
        }
        break;
      }
      case OP.RAW:
        for (const inner of unpack(f.buffer, f.bodyStart, f.bodyEnd)) handleFrame(inner);
        break;
      case OP.DISCONNECT: {
        let reason = bodyText(f);
        try {
          const notice = JSON.parse(reason);
          reason = notice.reason || reason;
          if (notice.reconnect) reason += " (reconnect allowed)";
          if (notice.reason === "busy" && notice.reconnect && typeof notice.retry_ms === "number") {
            retryMs = Math.min(60000, notice.retry_ms * (1 + 0.5 * busyStreak) * (0.9 + 0.2 * Math.random()));
            busyStreak += 1;
          }
        } catch (e) { /* not JSON: show it as it is */ }
        closeReason = reason;
        addMessage(f, "notice");
        log(`op 6 notice: ${reason}`);
        break;
      }
      case OP.CHANGE_ROOM_REPLY:
        if (pendingRoom !== null) $("current-room").textContent = pendingRoom;
        log(`op 13 room changed to ${pendingRoom}`);
        pendingRoom = null;
        heartbeat(); // refresh the online count of the new room
        break;
      case OP.SEND_MSG_REPLY:
        log(`op 5 reply: ${bodyText(f)}`);
        break;
      default:
        if (f.op >= PUSH_OP) addMessage(f, "push");
        else log(`op ${f.op} seq ${f.seq}: ${bodyText(f)}`);
    }
  }

  // ---------------------------------------------------------------------------------------- actions

  let configLoaded = null;

  function defaultWsUrl() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.hostname || "127.0.0.1"}:3102/sub`;
  }

  // A node listening on all interfaces reports 0.0.0.0: reach it the way the page was reached.
  function reachable(url) {
    try {
      const u = new URL(url, location.href);
      if (["0.0.0.0", "[::]", "::", ""].includes(u.hostname)) u.hostname = location.hostname || "127.0.0.1";
      if (u.protocol === "http:") u.protocol = "ws:";
      if (u.protocol === "https:") u.protocol = "wss:";
      return u.toString();
    } catch (e) {
      return url;
    }
  }

  async function loadConfig() {
    const note = $("config-note");
    try {
      const r = await fetch("/demo/config", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const reply = await r.json();
      const c = reply.data || {};
      demoAvailable = true;
      const wsUrl = location.protocol === "https:" && c.wss_url ? c.wss_url : c.ws_url;
      if (wsUrl) $("ws-url").value = reachable(wsUrl);
      if (c.mid !== undefined && c.mid !== null) $("mid").value = String(c.mid);
      if (c.token) $("token").value = c.token;
      if (c.api_key) apiKey = c.api_key;
      if (c.room_id) $("room").value = c.room_id;
      if (Array.isArray(c.accepts)) accepts = c.accepts;
      note.textContent = "Settings from the node's /demo/config.";
    } catch (e) {
      note.textContent = "No /demo/config on this node: type the WebSocket URL, token and mid.";
    }
    if (!$("ws-url").value) $("ws-url").value = defaultWsUrl();
    document.body.dataset.ready = "1";
  }

  async function connect() {
    await configLoaded;
    if (ws) {
      const old = ws;
      ws = null;
      old.close(1000, "reconnecting");
    }
    stopHeartbeats();
    closeReason = null;
    retryMs = null;
    clearTimeout(retryTimer);
    const url = $("ws-url").value.trim();
    const mid = parseInt($("mid").value || "0", 10) || 0;
    const room = $("room").value.trim();
    let token = $("token").value.trim();
    if (!token && demoAvailable) {
      try {
        const r = await fetch(`/demo/token?mid=${encodeURIComponent(mid)}`, { method: "POST" });
        const reply = await r.json();
        if (r.ok && reply.data) {
          token = reply.data.token || "";
          $("token").value = token;
        } else {
          log(`token refused: ${reply.message}`);
        }
      } catch (e) {
        log(`token request failed: ${e}`);
      }
    }
    setStatus("connecting");
    let sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      setStatus(`closed: ${e.message}`, "bad");
      return;
    }
    ws = sock;
    sock.binaryType = "arraybuffer";
    sock.onopen = () => {
      if (ws !== sock) return;
      setStatus("connected");
      setConnectedButtons(true);
      $("current-room").textContent = room || "-";
      const auth = { mid, key: "", room_id: room, platform: "web", accepts, token };
      sock.send(pack(OP.AUTH, JSON.stringify(auth)));
      log(`op 7 auth sent (mid ${mid}, room ${room || "none"})`);
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      if (typeof ev.data === "string") {
        log("text WebSocket message ignored");
        return;
      }
      try {
        for (const f of unpack(ev.data)) handleFrame(f);
      } catch (e) {
        log(`bad frame: ${e.message}`);
      }
    };
    sock.onerror = () => { if (ws === sock) log("WebSocket error"); };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      stopHeartbeats();
      setConnectedButtons(false);
      const reason = closeReason || ev.reason || `code ${ev.code}`;
      setStatus(`closed: ${reason}`, "bad");
      log(`WebSocket closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`);
      if (retryMs !== null) {  // the server was busy: come back when it said
        const wait = Math.round(retryMs);
        retryMs = null;
        setStatus(`server busy: reconnecting in ${wait} ms`, "bad");
        log(`server busy: reconnecting in ${wait} ms`);
        retryTimer = setTimeout(connect, wait);
      }
    };
  }

  function disconnect() {
    clearTimeout(retryTimer);
    if (!ws) return;
    closeReason = "closed by you";
    ws.close(1000, "bye");
  }

  function changeRoom() {
    const room = $("room").value.trim();
    pendingRoom = room;
    if (send(OP.CHANGE_ROOM, room)) log(`op 12 change room to ${room || "none"}`);
  }

  async function push() {
    const result = $("push-result");
    const room = $("room").value.trim();
    const m = /^([^:/]+):\/\/(.+)$/.exec(room);
    if (!m) {
      result.textContent = "room must look like type://id";
      return;
    }
    const message = $("message").value;
    if (!message) {
      result.textContent = "type a message first";
      return;
    }
    result.textContent = "pushing...";
    try {
      const url = `/goim/push/room?operation=${PUSH_OP}&type=${encodeURIComponent(m[1])}&room=${encodeURIComponent(m[2])}`;
      const r = await fetch(url, {
        method: "POST",
        headers: Object.assign({ "Content-Type": "application/octet-stream" },
                               apiKey ? { Authorization: `Bearer ${apiKey}` } : {}),
        body: utf8.encode(message),
      });
      const reply = await r.json();
      result.textContent = r.ok ? "pushed" : `refused: ${reply.message}`;
    } catch (e) {
      result.textContent = `push failed: ${e}`;
    }
  }

  $("connect-btn").addEventListener("click", connect);
  $("disconnect-btn").addEventListener("click", disconnect);
  $("heartbeat-btn").addEventListener("click", heartbeat);
  $("join-btn").addEventListener("click", changeRoom);
  $("push-btn").addEventListener("click", push);
  configLoaded = loadConfig();
})();
