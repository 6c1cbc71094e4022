// Drives src/imgate/static/imgate-im.js against a scripted server (a fake WebSocket) and prints what it
// saw as JSON; tests/test_im_js.py checks it. Usage: node im_module_check.mjs <path to imgate-im.js>
const { ImClient, OP, pack, unpack } = await import(process.argv[2]);

const inbox = Array.from({ length: 10 }, (_, i) => ({ seq: i + 1, msg_id: String(100 + i), conv: "u:1:2", from: 2, to: 1, type: "text", content: i + 1 }));
const acks = [];
const syncs = [];
let server = null;

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    server = this;
    setTimeout(() => { this.readyState = 1; this.onopen && this.onopen(); }, 0);
  }
  reply(op, seq, obj) {
    const buf = pack(op, seq, JSON.stringify(obj));
    setTimeout(() => this.onmessage({ data: buf }), 0);
  }
  push(seqs) {
    this.reply(OP.MSG_PUSH, 0, { msgs: seqs.map((s) => inbox[s - 1]) });
  }
  send(buf) {
    const [f] = unpack(buf);
    const body = f.body.length ? JSON.parse(new TextDecoder().decode(f.body)) : null;
    if (f.op === OP.AUTH) this.reply(OP.AUTH_REPLY, f.seq, { mid: body.mid, inbox_seq: 3, heartbeat: 30 });
    else if (f.op === OP.MSG_ACK) acks.push(body.seq);
    else if (f.op === OP.SYNC) {
      syncs.push([body.after, body.limit]);
      const rest = inbox.filter((m) => m.seq > body.after);
      this.reply(OP.SYNC_REPLY, f.seq, { msgs: rest.slice(0, body.limit), has_more: rest.length > body.limit, max_seq: inbox.length, groups: [] });
    } else if (f.op === OP.MSG_SEND) {
      const m = { seq: inbox.length + 1, msg_id: String(100 + inbox.length), conv: "u:1:2", from: 1, to: body.to, type: body.type, content: body.content, cmid: body.cmid };
      inbox.push(m);
      this.reply(OP.MSG_SEND_REPLY, f.seq, { cmid: body.cmid, msg_id: m.msg_id, seq: m.seq, ts: 1 });
    }
  }
  close() { this.readyState = 3; }
}

const im = new ImClient("ws://fake/sub", { mid: 1, syncPage: 2, WebSocketImpl: FakeWebSocket });
const seen = [];
im.addEventListener("message", (ev) => seen.push(ev.detail.seq));
const errors = [];
im.addEventListener("error", (ev) => errors.push(String(ev.detail)));
await im.connect();                       // catches up 1..3 (inbox_seq 3)
const afterConnect = [...seen];
server.push([5]);                         // gap: 4 is missing -> SYNC
server.push([5]);                         // duplicate
server.push([4]);                         // late
server.push([7, 6]);                      // out of order inside one push
server.push([10]);                        // gap of two
await new Promise((r) => setTimeout(r, 50));
const reply = await im.send(2, "mine");   // the sender's own entry, emitted from the 23
await new Promise((r) => setTimeout(r, 50));
console.log(JSON.stringify({ afterConnect, seen, acks, syncs, errors, reply, lastSeq: im.lastSeq }));
process.exit(0);
