// The chat demo page: page glue only; the protocol is the reusable module /imgate-im.js. Single chats
// and groups (created with the demo's API key, POST /im/groups), in either group mode.
import { ImClient, singleConv } from "./imgate-im.js";

const $ = (id) => document.getElementById(id);
let im = null;            // one client per user id: its lastSeq survives going offline and back
let me = 0;
let active = null;        // the open conversation
let demoAvailable = false;
let apiKey = "";          // the demo's in-memory API key (scopes push, im): creates groups
const convs = new Map();  // conv -> {peer, group, msgs: [msg], readSeq, readGseq, peerReadMsgId}

function conv(id, peer, group = 0) {
  let c = convs.get(id);
  if (c === undefined) {
    c = { peer, group, msgs: [], readSeq: 0, readGseq: 0, peerReadMsgId: 0 };
    convs.set(id, c);
  }
  return c;
}

const isNotice = (m) => m.type === "member" || m.type === "mode";
// an inbox entry counts by its seq; a read-mode group message (seq 0) by its gseq, read here
const isUnread = (c, m) => m.from !== me && !isNotice(m) && (m.seq > 0 ? m.seq > c.readSeq : m.gseq > c.readGseq);
const unread = (c) => c.msgs.filter((m) => isUnread(c, m)).length;
const lastTs = (c) => (c.msgs.length ? c.msgs[c.msgs.length - 1].ts : 0);

function noticeText(m) {
  const x = m.content || {};
  if (m.type === "mode") return `the group switched to ${x.mode} mode (${x.members} members)`;
  const parts = [];
  if (x.add && x.add.length) parts.push(`added ${x.add.join(", ")}`);
  if (x.remove && x.remove.length) parts.push(`removed ${x.remove.join(", ")}`);
  return `user ${x.by} ${parts.join(", ") || "changed the group"}`;
}

function render() {
  const list = $("convs");
  list.replaceChildren();
  const sorted = [...convs.entries()].sort((a, b) => lastTs(b[1]) - lastTs(a[1]));
  for (const [id, c] of sorted) {
    const li = document.createElement("li");
    li.dataset.conv = id;
    li.dataset.peer = String(c.peer);
    if (id === active) li.className = "active";
    const name = document.createElement("span");
    name.textContent = c.group ? `group ${c.group}` : `user ${c.peer}`;
    const badge = document.createElement("span");
    const n = unread(c);
    badge.className = n ? "unread" : "unread zero";
    badge.textContent = String(n);
    li.append(name, badge);
    li.addEventListener("click", () => (c.group ? openGroup(c.group) : openConv(c.peer)));
    list.append(li);
  }
  const chat = $("chat");
  chat.replaceChildren();
  if (active === null) return;
  const c = convs.get(active);
  $("title").textContent = c.group ? `Group ${c.group}` : `With user ${c.peer}`;
  for (const m of c.msgs) {
    const li = document.createElement("li");
    if (isNotice(m)) {
      li.className = "system";
      li.textContent = noticeText(m);
      chat.append(li);
      continue;
    }
    const mine = m.from === me;
    li.className = (mine ? "mine" : "theirs") + (mine && Number(m.msg_id) <= c.peerReadMsgId ? " read" : "");
    li.dataset.seq = String(m.seq);
    li.dataset.from = String(m.from);
    if (m.group !== undefined) li.dataset.gseq = String(m.gseq);
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = typeof m.content === "string" ? m.content : JSON.stringify(m.content);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = new Date(m.ts).toLocaleTimeString();
    li.append(body, meta);
    chat.append(li);
  }
  chat.scrollTop = chat.scrollHeight;
}

// the newest inbox entry of the conversation (a read-mode group's messages have none)
const lastSeq = (c) => c.msgs.reduce((s, m) => Math.max(s, m.seq), 0);

function onMessage(m) {
  const peer = m.from === me ? m.to : m.from;
  const c = m.group !== undefined ? conv(m.conv, 0, m.group) : conv(m.conv, peer);
  if (m.type === "read") {
    if (m.from === me) c.readSeq = Math.max(c.readSeq, m.content.seq);           // read on another device
    else c.peerReadMsgId = Math.max(c.peerReadMsgId, Number(m.content.msg_id)); // the peer read ours
  } else {
    c.msgs.push(m);
    if (m.conv === active && m.from !== me) markRead(c, m.conv);
  }
  render();
}

async function markRead(c, id) {
  c.readGseq = c.msgs.reduce((g, m) => Math.max(g, m.gseq || 0), c.readGseq);
  const seq = lastSeq(c);
  if (seq <= c.readSeq || !im || !im.open) return;
  try {
    const reply = await im.read(id, seq);
    c.readSeq = Math.max(c.readSeq, reply.seq);
    render();
  } catch (e) {
    $("error").textContent = `read: ${e.message}`;
  }
}

function openConv(peer) {
  if (!peer || peer === me) return;
  active = singleConv(me, peer);
  const c = conv(active, peer);
  render();
  markRead(c, active);
}

function openGroup(group) {
  if (!(group > 0)) return;
  active = `g:${group}`;
  const c = conv(active, 0, group);
  render();
  markRead(c, active);
}

async function createGroup() {
  const members = $("group-members").value.split(/[\s,]+/).filter(Boolean).map((x) => parseInt(x, 10));
  if (!(me > 0) || members.some((x) => !(x > 0))) {
    $("error").textContent = !(me > 0) ? "go online first" : "member ids are numbers, e.g. 2, 3";
    return;
  }
  try {
    const r = await fetch(`/im/groups?uid=${me}`, {
      method: "POST",
      headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
      body: JSON.stringify({ name: `group of ${me}`, members }),
    });
    const reply = await r.json();
    if (!r.ok) throw new Error(reply.message || reply.error || `HTTP ${r.status}`);
    $("group-members").value = "";
    $("error").textContent = "";
    openGroup(reply.data.group);
  } catch (e) {
    $("error").textContent = `create group: ${e.message}`;
  }
}

async function token(mid) {
  if (!demoAvailable) return "";
  const r = await fetch(`/demo/token?mid=${encodeURIComponent(mid)}`, { method: "POST" });
  const reply = await r.json();
  return (r.ok && reply.data && reply.data.token) || "";
}

async function connect() {
  const mid = parseInt($("mid").value, 10);
  if (!(mid > 0)) {
    $("error").textContent = "type your user id first";
    return;
  }
  if (im === null || mid !== me) { // another user: start over
    if (im) im.close();
    me = mid;
    convs.clear();
    active = null;
    im = new ImClient($("ws-url").value.trim(), { mid, token: await token(mid) });
    im.addEventListener("message", (ev) => onMessage(ev.detail));
    im.addEventListener("status", (ev) => {
      const { state, reason } = ev.detail;
      $("status").textContent = state === "closed" ? `offline${reason ? " (" + reason + ")" : ""}` : state;
      $("status").className = state;
      $("send-btn").disabled = state !== "open";
      $("disconnect-btn").disabled = state !== "open";
    });
    im.addEventListener("error", (ev) => { $("error").textContent = String(ev.detail.message || ev.detail); });
  }
  $("error").textContent = "";
  try {
    await im.connect(); // emits everything since the last seq this page saw
    if (active !== null) markRead(convs.get(active), active);
  } catch (e) {
    $("error").textContent = `connect: ${e.message}`;
  }
}

async function send() {
  const text = $("text").value;
  if (!text || active === null) {
    $("error").textContent = active === null ? "open a conversation first" : "type a message first";
    return;
  }
  const c = convs.get(active);
  try {
    if (c.group) await im.sendGroup(c.group, text);
    else await im.send(c.peer, text);
    $("text").value = "";
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = `send: ${e.message}`;
  }
}

async function loadConfig() {
  try {
    const r = await fetch("/demo/config", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const c = (await r.json()).data || {};
    demoAvailable = true;
    apiKey = c.api_key || "";
    if (c.ws_url) {
      const u = new URL(c.ws_url);
      if (["0.0.0.0", "[::]", "::"].includes(u.hostname)) u.hostname = location.hostname || "127.0.0.1";
      $("ws-url").value = u.toString();
    }
  } catch (e) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    $("ws-url").value = `${scheme}://${location.hostname || "127.0.0.1"}:3102/sub`;
  }
  const asked = new URLSearchParams(location.search);
  if (asked.get("mid")) $("mid").value = asked.get("mid");
  if (asked.get("peer")) $("peer").value = asked.get("peer");
  document.body.dataset.ready = "1";
}

$("connect-btn").addEventListener("click", connect);
$("disconnect-btn").addEventListener("click", () => im && im.close());
$("open-btn").addEventListener("click", () => openConv(parseInt($("peer").value, 10)));
$("open-group-btn").addEventListener("click", () => openGroup(parseInt($("group-id").value, 10)));
$("create-group-btn").addEventListener("click", createGroup);
$("send-btn").addEventListener("click", send);
$("text").addEventListener("keydown", (ev) => { if (ev.key === "Enter") send(); });
loadConfig();
