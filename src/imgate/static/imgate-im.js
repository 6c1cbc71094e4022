// imgate IM client for web apps: goim v2 frames over WebSocket and imgate's IM protocol (docs/im.md).
// An ES module without dependencies; the node serves it at /imgate-im.js.
//
//   import { ImClient } from "/imgate-im.js";
//   const im = new ImClient("ws://host:3102/sub", { mid: 1, token });
//   im.addEventListener("message", (ev) => show(ev.detail));   // each inbox entry once, in seq order
//   await im.connect();                                         // op 7 -> 8; catches up from im.lastSeq
//   await im.send(2, { text: "hi" });                           // op 22 -> 23, once durable
//   await im.read("u:1:2", seq);                                // op 32 -> 33
//   await im.sendGroup(7, "hello all");                         // op 22 -> 23 to group 7
//
// Events: "message" (detail: a msg), "status" (detail: {state, reason}), "error" (detail: Error).
// Gaps in seq are filled with SYNC (op 26) before later entries are emitted; seqs already emitted are
// dropped; everything emitted is acked (op 25). `lastSeq` survives a reconnect of the same object, so
// connect() again after being offline emits what was missed.
// Groups in either mode without the caller knowing (docs/im.md "Groups"): a write-mode group's
// messages are inbox entries; a read-mode group's (seq 0) are emitted when their gseq follows the
// group's last one (a jump is pulled with op 28 first, an old one dropped), the groups SYNC reports
// with news are pulled, and op 30 moves the read position, as imgate.client's MessageStream does.

export const OP = Object.freeze({
  HEARTBEAT: 2, HEARTBEAT_REPLY: 3, DISCONNECT: 6, AUTH: 7, AUTH_REPLY: 8, RAW: 9,
  MSG_SEND: 22, MSG_SEND_REPLY: 23, MSG_PUSH: 24, MSG_ACK: 25, SYNC: 26, SYNC_REPLY: 27,
  GROUP_PULL: 28, GROUP_PULL_REPLY: 29, GROUP_ACK: 30, READ: 32, READ_REPLY: 33,
});
const HEADER_LEN = 16;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8");

/** One goim frame: 16-byte big-endian header, then the body (a string or bytes). */
export function pack(op, seq, body) {
  const bytes = typeof body === "string" ? utf8.encode(body) : (body || new Uint8Array(0));
  const buf = new ArrayBuffer(HEADER_LEN + bytes.length);
  const view = new DataView(buf);
  view.setInt32(0, HEADER_LEN + bytes.length);
  view.setInt16(4, HEADER_LEN);
  view.setInt16(6, 1);
  view.setInt32(8, op);
  view.setInt32(12, seq);
  new Uint8Array(buf, HEADER_LEN).set(bytes);
  return buf;
}

/** Every whole frame in `buffer` [offset, end): [{op, seq, body: Uint8Array}]; throws if malformed. */
export function unpack(buffer, offset = 0, end = buffer.byteLength) {
  const view = new DataView(buffer);
  const frames = [];
  while (offset < end) {
    if (end - offset < HEADER_LEN) throw new Error(`truncated frame header (${end - offset} bytes)`);
    const packLen = view.getInt32(offset);
    if (view.getInt16(offset + 4) !== HEADER_LEN) throw new Error("bad headerLen");
    if (packLen < HEADER_LEN || offset + packLen > end) throw new Error(`bad packLen ${packLen}`);
    frames.push({
      op: view.getInt32(offset + 8),
      seq: view.getInt32(offset + 12),
      body: new Uint8Array(buffer, offset + HEADER_LEN, packLen - HEADER_LEN),
    });
    offset += packLen;
  }
  return frames;
}

/** An error reply of the server ({code, error}); the connection stays open. */
export class ImError extends Error {
  constructor(code, error) {
    super(`${code}: ${error}`);
    this.code = code;
  }
}

/** The conversation id of a single chat between users a and b. */
export const singleConv = (a, b) => (a < b ? `u:${a}:${b}` : `u:${b}:${a}`);

export class ImClient extends EventTarget {
  constructor(url, { mid, token = "", platform = "web", timeoutMs = 10000, syncPage = 100,
                     WebSocketImpl = globalThis.WebSocket } = {}) {
    super();
    this.url = url;
    this.mid = mid;
    this.token = token;
    this.platform = platform;
    this.timeoutMs = timeoutMs;
    this.syncPage = syncPage;
    this.WebSocketImpl = WebSocketImpl;
    this.lastSeq = 0;         // the newest seq emitted: everything up to it was emitted once
    this.inboxSeq = 0;        // from the auth reply
    this.ws = null;
    this._seq = 0;
    this._pending = new Map(); // frame seq -> {replyOp, resolve, reject, timer}
    this._chain = Promise.resolve(); // pushes are handled one after another (a gap fill waits)
    this._beat = null;
    this._closeReason = null;
    this._gseq = new Map();   // read-mode group -> the last gseq emitted (or known read)
    this._gacked = new Map();
  }

  get open() {
    return this.ws !== null && this.ws.readyState === 1;
  }

  _status(state, reason = "") {
    this.dispatchEvent(new CustomEvent("status", { detail: { state, reason } }));
  }

  _nextSeq() {
    this._seq = (this._seq % 0x7fffffff) + 1;
    return this._seq;
  }

  _sendFrame(op, body, seq = this._nextSeq()) {
    if (!this.open) throw new Error(`not connected: op ${op} not sent`);
    this.ws.send(pack(op, seq, body));
    return seq;
  }

  /** Send a frame and wait for `replyOp` with the same seq; the parsed JSON body. */
  request(op, body, replyOp = op + 1) {
    return new Promise((resolve, reject) => {
      let seq;
      try {
        seq = this._sendFrame(op, typeof body === "string" ? body : JSON.stringify(body));
      } catch (e) {
        reject(e);
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(seq);
        reject(new Error(`no reply op ${replyOp} to op ${op} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this._pending.set(seq, { replyOp, resolve, reject, timer });
    });
  }

  /** Open the WebSocket, authenticate, then emit what arrived since `lastSeq`. */
  connect() {
    this.close();
    this._closeReason = null;
    this._status("connecting");
    const ws = new this.WebSocketImpl(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    return new Promise((resolve, reject) => {
      const authSeq = this._nextSeq();
      this._pending.set(authSeq, { replyOp: OP.AUTH_REPLY, resolve, reject, timer: null });
      ws.onopen = () => {
        const auth = { mid: this.mid, key: "", room_id: "", platform: this.platform, accepts: [], token: this.token };
        ws.send(pack(OP.AUTH, authSeq, JSON.stringify(auth)));
      };
      ws.onmessage = (ev) => {
        if (this.ws !== ws || typeof ev.data === "string") return;
        try {
          for (const f of unpack(ev.data)) this._frame(f);
        } catch (e) {
          this.dispatchEvent(new CustomEvent("error", { detail: e }));
        }
      };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this._gone(this._closeReason || ev.reason || `closed (code ${ev.code})`);
      };
    }).then(async (reply) => {
      this.inboxSeq = reply.inbox_seq || 0;
      const every = Math.max(1000, (reply.heartbeat || 30) * 1000);
      this._beat = setInterval(() => { if (this.open) this._sendFrame(OP.HEARTBEAT, ""); }, every);
      this._status("open");
      // a read-mode group's room (joined at auth) may have news the inbox does not show: SYNC's groups
      const inGroups = (reply.rooms || []).some((r) => typeof r === "string" && r.startsWith("im://"));
      if (this.lastSeq < this.inboxSeq || inGroups) await this._serial(() => this.fill(this.inboxSeq));
      return reply;
    });
  }

  _gone(reason) {
    clearInterval(this._beat);
    this._beat = null;
    this.ws = null;
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new Error(reason));
    }
    this._pending.clear();
    this._status("closed", reason);
  }

  close() {
    const ws = this.ws;
    if (ws === null) return;
    this._closeReason = "closed by the client";
    this._gone(this._closeReason);
    ws.close(1000, "bye");
  }

  _frame(f) {
    if (f.op === OP.RAW) {
      for (const inner of unpack(f.body.buffer, f.body.byteOffset, f.body.byteOffset + f.body.byteLength)) this._frame(inner);
      return;
    }
    const text = fromUtf8.decode(f.body);
    const p = this._pending.get(f.seq);
    if (p !== undefined && p.replyOp === f.op) {
      this._pending.delete(f.seq);
      clearTimeout(p.timer);
      let reply;
      try {
        reply = text ? JSON.parse(text) : {};
      } catch (e) {
        p.reject(e);
        return;
      }
      if (reply.code) p.reject(new ImError(reply.code, reply.error));
      else p.resolve(reply);
      return;
    }
    if (f.op === OP.MSG_PUSH) {
      const msgs = JSON.parse(text).msgs || [];
      this._serial(() => this._take(msgs));
    } else if (f.op === OP.DISCONNECT) {
      try { this._closeReason = JSON.parse(text).reason; } catch (e) { this._closeReason = text; }
    } else if (f.op === OP.SYNC_REPLY) { // an error answering an ack: nothing to wait for
      this.dispatchEvent(new CustomEvent("error", { detail: new Error(text) }));
    }
  }

  _serial(fn) {
    this._chain = this._chain.then(fn).catch((e) => this.dispatchEvent(new CustomEvent("error", { detail: e })));
    return this._chain;
  }

  async _take(msgs) {
    for (const m of msgs) {
      if (m.seq === 0 && m.group !== undefined) { // read mode: from the group's timeline
        await this._timeline(m);
        continue;
      }
      if (m.seq <= this.lastSeq) continue; // already emitted
      if (m.seq > this.lastSeq + 1) await this.fill(m.seq - 1);
      if (m.seq > this.lastSeq) await this._entry(m);
    }
    this._ack();
  }

  async _entry(m) {
    if (m.type === "mode" && m.group !== undefined && m.content && typeof m.content === "object") {
      // into read mode the timeline goes on after it; back to write mode, what the timeline got
      // meanwhile comes first (SYNC's groups says how far)
      if (m.content.mode === "read") this._gseq.set(m.group, Math.max(this._gseq.get(m.group) || 0, m.gseq));
      else await this._news(await this.sync(this.lastSeq, 1));
    }
    this._emit(m);
  }

  _emit(m) {
    if (m.seq > 0) this.lastSeq = m.seq;
    this.dispatchEvent(new CustomEvent("message", { detail: m }));
  }

  async _timeline(m) {
    if (!this._gseq.has(m.group)) this._gseq.set(m.group, m.gseq - 1); // first news of it: nothing older owed
    if (m.gseq > this._gseq.get(m.group) + 1) await this._pull(m.group, m.gseq - 1);
    if (m.gseq === this._gseq.get(m.group) + 1) {
      this._gseq.set(m.group, m.gseq);
      this._emit(m);
    }
  }

  async _news(reply) {
    for (const n of reply.groups || []) {
      this._gseq.set(n.group, Math.max(this._gseq.get(n.group) || 0, n.cursor));
      await this._pull(n.group, n.max_gseq);
    }
  }

  /** Op 28 from the last gseq emitted for `group` until `upto`. */
  async _pull(group, upto) {
    while ((this._gseq.get(group) || 0) < upto) {
      const before = this._gseq.get(group) || 0;
      let reply;
      try {
        reply = await this.groupPull(group, before, this.syncPage);
      } catch (e) {
        if (!(e instanceof ImError)) throw e;
        this._gseq.set(group, upto); // removed meanwhile: nothing more of it is owed
        break;
      }
      for (const m of reply.msgs) {
        if (m.gseq > (this._gseq.get(group) || 0) && m.gseq <= upto) {
          this._gseq.set(group, m.gseq);
          this._emit(m);
        }
      }
      if (!reply.has_more || this._gseq.get(group) === before) { // the rest is from before the join
        this._gseq.set(group, Math.max(this._gseq.get(group) || 0, upto));
        break;
      }
    }
  }

  _ack() {
    if (!this.open) return;
    if (this.lastSeq > 0 && this.lastSeq !== this._acked) {
      this._acked = this.lastSeq;
      this._sendFrame(OP.MSG_ACK, JSON.stringify({ seq: this.lastSeq }));
    }
    for (const [group, gseq] of this._gseq) {
      if ((this._gacked.get(group) || 0) < gseq) {
        this._gacked.set(group, gseq);
        this._sendFrame(OP.GROUP_ACK, JSON.stringify({ group, gseq }));
      }
    }
  }

  /** SYNC from lastSeq until `upto` (or the newest), emitting each entry (a group's news first). At
   *  least one SYNC: read-mode groups may have news while the inbox has none. */
  async fill(upto = Infinity) {
    do {
      const reply = await this.sync(this.lastSeq, this.syncPage);
      await this._news(reply);
      for (const m of reply.msgs) if (m.seq > this.lastSeq) await this._entry(m);
      if (!reply.has_more) break;
    } while (this.lastSeq < upto);
    this._ack();
  }

  /** Op 22 -> 23: {cmid, msg_id, seq, ts} once the message is durable. */
  async send(to, content, { type = "text", cmid = null } = {}) {
    cmid = cmid || `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    const reply = await this.request(OP.MSG_SEND, { cmid, to, type, content });
    // the sending connection gets no op 24 for its own entry: emit it from the reply, in seq order
    const msg = { seq: reply.seq, msg_id: reply.msg_id, conv: singleConv(this.mid, to), from: this.mid, to, type,
                  content, ts: reply.ts, cmid };
    await this._serial(() => this._take([msg]));
    return reply;
  }

  /** Op 22 -> 23 to a group: {cmid, msg_id, seq, group, gseq, ts}; seq is 0 in read mode (the
   *  message then comes to this connection through the group's room like to every member). */
  async sendGroup(group, content, { type = "text", cmid = null } = {}) {
    cmid = cmid || `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    const reply = await this.request(OP.MSG_SEND, { cmid, group, type, content });
    if (reply.seq > 0) { // write mode: its own inbox entry, emitted from the reply in seq order
      const msg = { seq: reply.seq, msg_id: reply.msg_id, conv: `g:${group}`, from: this.mid, group,
                    gseq: reply.gseq, type, content, ts: reply.ts, cmid };
      await this._serial(() => this._take([msg]));
    }
    return reply;
  }

  /** Op 28 -> 29: a group's timeline after gseq `after`. */
  groupPull(group, after = 0, limit = this.syncPage) {
    return this.request(OP.GROUP_PULL, { group, after, limit });
  }

  /** Op 26 -> 27. */
  sync(after = 0, limit = this.syncPage) {
    return this.request(OP.SYNC, { after, limit });
  }

  /** Op 32 -> 33: the read position in `conv` moves up to `seq`; the peer gets a "read" msg. */
  read(conv, seq) {
    return this.request(OP.READ, { conv, seq });
  }
}
