/* c_broadcast: the machine's limit for a WebSocket room push, as a benchmark peer.
 *
 * One thread, epoll, non-blocking sockets, nothing per connection but a descriptor in an array.
 * It speaks the peers' protocol of benchmarks/peers/README.md:
 *   - WebSocket listener: minimal RFC 6455 upgrade (Sec-WebSocket-Accept = base64(SHA-1(key + GUID))),
 *     then the client's first binary message joins it to the room and is answered with a goim op-8
 *     frame; anything the client sends later is read and discarded.
 *   - control port: HTTP/1.1 keep-alive, `POST /push` with the message as the body; pipelined requests
 *     are all parsed from what one read() returned, their messages are each encoded once (WebSocket
 *     header + goim op-1000 header + body), sent to every member, then answered `200 ok`.
 *   - --batch N: the messages of one read are sent N per send() (N back-to-back WebSocket messages in
 *     one buffer); --batch 1 is one send() per message per recipient.
 *   - unicast: `POST /push?mid=N` sends the message to the client whose join frame carried "mid": N
 *     (the goim auth body), at once: the harness's own latency floor for the unicast scenario.
 * A send() that does not take its whole buffer (a full socket buffer) closes that client: a benchmark
 * baseline, not a server; the count is printed on exit (SIGTERM/SIGINT).
 *
 * --work-us N spends N microseconds of this thread's CPU time (a busy loop) on each unicast push before
 * sending it: a control for the unicast scenario, the latency of a server that costs N us more per push
 * than this one and is otherwise as lean.
 *
 * --idle-threads N starts N threads that only sleep: a multi-threaded process pays more per send()
 * (the kernel's fdget() takes a reference on the file when the descriptor table is shared), which the
 * Python servers do (uvloop's getaddrinfo starts libuv's thread pool); this measures that difference.
 *
 *   cc -O2 -pthread -o c_broadcast c_broadcast.c
 *   c_broadcast --ws 127.0.0.1:PORT --control 127.0.0.1:PORT [--batch N] [--idle-threads N] [--work-us N]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)
#define OP_PUSH 1000
#define OP_AUTH_REPLY 8
#define MAX_HEAD 8192
#define MAX_CTL_BUF (4 << 20)

/* ------------------------------------------------------------------ SHA-1 (FIPS 180-4) and base64 */

static uint32_t rol32(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999u; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1u; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDCu; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6u; }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d; d = c; c = rol32(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    size_t i = 0;
    for (; i + 64 <= len; i += 64)
        sha1_block(h, msg + i);
    uint8_t tail[128];
    memset(tail, 0, sizeof tail);
    size_t rest = len - i;
    memcpy(tail, msg + i, rest);
    tail[rest] = 0x80;
    size_t tl = rest + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++)
        tail[tl - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(h, tail);
    if (tl == 128)
        sha1_block(h, tail + 64);
    for (int j = 0; j < 5; j++) {
        out[4 * j] = (uint8_t)(h[j] >> 24);
        out[4 * j + 1] = (uint8_t)(h[j] >> 16);
        out[4 * j + 2] = (uint8_t)(h[j] >> 8);
        out[4 * j + 3] = (uint8_t)h[j];
    }
}

static void base64(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ connections */

enum { K_LISTEN_WS = 1, K_LISTEN_CTL, K_WS, K_CTL };
enum { WS_HANDSHAKE, WS_WAIT_JOIN, WS_JOINED };

typedef struct conn {
    int fd;
    int kind;
    int state;
    int member;          /* index in members[] when joined */
    long mid;            /* from the join frame, -1 if none */
    char *buf;           /* handshake / join / control input; NULL once joined */
    size_t len, cap;
} conn;

static int ep;
static conn **by_fd;
static int max_fd;
static int *members;
static int n_members, cap_members;
static int batch = 1;
static long work_us = 0;    /* --work-us: CPU spent per unicast push before its send() */

static long long thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static int *mid_fd;      /* mid -> fd of its (last) connection, -1 if none */
static long mid_cap;
static volatile sig_atomic_t stopping;
static long long n_sends, n_short, n_messages, n_joined;
static char scratch[65536];

static void die(const char *what) { perror(what); exit(1); }

static void add_member(conn *c)
{
    if (n_members == cap_members) {
        cap_members = cap_members ? cap_members * 2 : 1024;
        members = realloc(members, (size_t)cap_members * sizeof *members);
        if (!members) die("realloc");
    }
    c->member = n_members;
    members[n_members++] = c->fd;
    n_joined++;
}

static void drop_member(conn *c)
{
    int last = members[--n_members];
    if (c->member != n_members) {
        members[c->member] = last;
        by_fd[last]->member = c->member;
    }
    c->member = -1;
}

static void close_conn(conn *c)
{
    if (c->mid >= 0 && c->mid < mid_cap && mid_fd[c->mid] == c->fd)
        mid_fd[c->mid] = -1;
    if (c->kind == K_WS && c->state == WS_JOINED && c->member >= 0)
        drop_member(c);
    by_fd[c->fd] = NULL;
    close(c->fd);
    free(c->buf);
    free(c);
}

static conn *new_conn(int fd, int kind)
{
    if (fd >= max_fd) { close(fd); return NULL; }
    conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = fd;
    c->kind = kind;
    c->member = -1;
    c->mid = -1;
    by_fd[fd] = c;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return c;
}

static int append(conn *c, const char *p, size_t n, size_t limit)
{
    if (c->len + n > limit)
        return -1;
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 512;
        while (cap < c->len + n) cap *= 2;
        char *b = realloc(c->buf, cap);
        if (!b) die("realloc");
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, p, n);
    c->len += n;
    return 0;
}

static void consume(conn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* whole-buffer send for small replies; a client that cannot take a handshake reply is dropped */
static int send_all(int fd, const char *p, size_t n)
{
    return send(fd, p, n, SEND_FLAGS) == (ssize_t)n ? 0 : -1;
}

/* ------------------------------------------------------------------ WebSocket side */

/* a WebSocket binary message header for a payload of n bytes; returns its size */
static size_t ws_header(uint8_t *h, size_t n)
{
    h[0] = 0x82;
    if (n < 126) { h[1] = (uint8_t)n; return 2; }
    if (n < 65536) { h[1] = 126; h[2] = (uint8_t)(n >> 8); h[3] = (uint8_t)n; return 4; }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

static void goim_header(uint8_t *p, uint32_t body_len, uint32_t op, uint32_t seq)
{
    uint32_t pack = 16 + body_len;
    p[0] = pack >> 24; p[1] = pack >> 16; p[2] = pack >> 8; p[3] = (uint8_t)pack;
    p[4] = 0; p[5] = 16; p[6] = 0; p[7] = 1;
    p[8] = op >> 24; p[9] = op >> 16; p[10] = op >> 8; p[11] = (uint8_t)op;
    p[12] = seq >> 24; p[13] = seq >> 16; p[14] = seq >> 8; p[15] = (uint8_t)seq;
}

static int handshake(conn *c)
{
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end)
        return c->len > MAX_HEAD - 1 ? -1 : 0;
    size_t head_len = (size_t)(end - c->buf) + 4;
    const char *key = NULL;
    size_t key_len = 0;
    for (char *line = memchr(c->buf, '\n', head_len); line && line < end; line = memchr(line, '\n', (size_t)(end - line))) {
        line++;
        if ((size_t)(end - line) > 18 && strncasecmp(line, "sec-websocket-key:", 18) == 0) {
            const char *v = line + 18;
            while (*v == ' ') v++;
            const char *e = v;
            while (e < end && *e != '\r' && *e != ' ') e++;
            key = v;
            key_len = (size_t)(e - v);
            break;
        }
    }
    if (!key || key_len == 0 || key_len > 64)
        return -1;
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t in[128], digest[20];
    memcpy(in, key, key_len);
    memcpy(in + key_len, guid, sizeof guid - 1);
    sha1(in, key_len + sizeof guid - 1, digest);
    char accept[32];
    base64(digest, 20, accept);
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    if (send_all(c->fd, resp, (size_t)n) < 0)
        return -1;
    consume(c, head_len);
    c->state = WS_WAIT_JOIN;
    return 1;
}

/* parse whole client frames from the buffer until the first binary message; returns -1 to close */
static int wait_join(conn *c)
{
    for (;;) {
        const uint8_t *p = (const uint8_t *)c->buf;
        if (c->len < 2) return 0;
        uint64_t n = p[1] & 127;
        size_t h = 2;
        if (n == 126) { if (c->len < 4) return 0; n = (uint64_t)p[2] << 8 | p[3]; h = 4; }
        else if (n == 127) return -1;          /* a join is small */
        if (p[1] & 0x80) h += 4;               /* masked, as a client must */
        if (c->len < h + n) return c->len > MAX_HEAD ? -1 : 0;
        int opcode = p[0] & 15;
        if (opcode == 2 && (p[1] & 0x80) && n < 1024) {
            /* unmask the join and take "mid": N from its JSON body, for unicast */
            char body[1024];
            const uint8_t *mask = p + h - 4;
            for (uint64_t i = 0; i < n; i++) body[i] = (char)(p[h + i] ^ mask[i & 3]);
            body[n] = 0;
            const char *m = memmem(body, (size_t)n, "\"mid\":", 6);
            if (m) {
                long mid = strtol(m + 6, NULL, 10);
                if (mid >= 0 && mid < (1L << 24)) {
                    if (mid >= mid_cap) {
                        long cap = mid_cap ? mid_cap : 1024;
                        while (cap <= mid) cap *= 2;
                        mid_fd = realloc(mid_fd, (size_t)cap * sizeof *mid_fd);
                        if (!mid_fd) die("realloc");
                        for (long i = mid_cap; i < cap; i++) mid_fd[i] = -1;
                        mid_cap = cap;
                    }
                    mid_fd[mid] = c->fd;
                    c->mid = mid;
                }
            }
        }
        consume(c, h + (size_t)n);
        if (opcode == 8) return -1;
        if (opcode == 2) {
            uint8_t reply[2 + 16 + 2];
            ws_header(reply, 18);
            goim_header(reply + 2, 2, OP_AUTH_REPLY, 1);
            memcpy(reply + 18, "{}", 2);
            if (send_all(c->fd, (const char *)reply, sizeof reply) < 0) return -1;
            c->state = WS_JOINED;
            free(c->buf);
            c->buf = NULL;
            c->len = c->cap = 0;
            add_member(c);
            return 0;
        }
    }
}

static void on_ws_readable(conn *c)
{
    if (c->state == WS_JOINED) {
        ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            close_conn(c);
        return;                                   /* later client messages are ignored */
    }
    ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0 || append(c, scratch, (size_t)r, MAX_HEAD) < 0) { close_conn(c); return; }
    if (c->state == WS_HANDSHAKE) {
        int h = handshake(c);
        if (h < 0) { close_conn(c); return; }
        if (h == 0) return;
    }
    if (wait_join(c) < 0)
        close_conn(c);
}

/* ------------------------------------------------------------------ control side: the push */

static void broadcast(uint8_t **msgs, size_t *lens, int count)
{
    static uint8_t *group;
    static size_t group_cap;
    int closing_n = 0;
    static int *closing;
    static int closing_cap;
    for (int i = 0; i < count; i += batch) {
        int k = count - i < batch ? count - i : batch;
        const uint8_t *buf;
        size_t len = 0;
        if (k == 1) {
            buf = msgs[i];
            len = lens[i];
        } else {
            for (int j = 0; j < k; j++) len += lens[i + j];
            if (len > group_cap) { group_cap = len * 2; group = realloc(group, group_cap); if (!group) die("realloc"); }
            size_t off = 0;
            for (int j = 0; j < k; j++) { memcpy(group + off, msgs[i + j], lens[i + j]); off += lens[i + j]; }
            buf = group;
        }
        for (int m = 0; m < n_members; m++) {
            ssize_t r = send(members[m], buf, len, SEND_FLAGS);
            n_sends++;
            if (r != (ssize_t)len) {
                n_short++;
                if (closing_n == closing_cap) {
                    closing_cap = closing_cap ? closing_cap * 2 : 64;
                    closing = realloc(closing, (size_t)closing_cap * sizeof *closing);
                    if (!closing) die("realloc");
                }
                closing[closing_n++] = members[m];
            }
        }
        /* broken clients leave after this group's walk, so the array stays stable during it */
        for (int j = 0; j < closing_n; j++)
            if (by_fd[closing[j]]) close_conn(by_fd[closing[j]]);
        closing_n = 0;
    }
    n_messages += count;
}

static void on_ctl_readable(conn *c)
{
    ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0 || append(c, scratch, (size_t)r, MAX_CTL_BUF) < 0) { close_conn(c); return; }
    int count = 0, cap = 0, replies = 0, not_found = 0;
    uint8_t **msgs = NULL;
    size_t *lens = NULL;
    size_t pos = 0;
    for (;;) {
        char *start = c->buf + pos;
        char *end = memmem(start, c->len - pos, "\r\n\r\n", 4);
        if (!end) break;
        size_t body_len = 0;
        for (char *line = memchr(start, '\n', (size_t)(end - start)); line && line < end; line = memchr(line, '\n', (size_t)(end - line))) {
            line++;
            if ((size_t)(end - line) > 15 && strncasecmp(line, "content-length:", 15) == 0) {
                body_len = strtoul(line + 15, NULL, 10);
                break;
            }
        }
        size_t head_len = (size_t)(end - start) + 4;
        if (pos + head_len + body_len > c->len) break;
        if (strncmp(start, "POST /push?mid=", 15) == 0) {
            /* unicast: straight to that client's socket */
            long mid = strtol(start + 15, NULL, 10);
            uint8_t m[10 + 16 + 4096];
            if (work_us > 0) {
                long long until = thread_cpu_ns() + work_us * 1000LL;
                while (thread_cpu_ns() < until)
                    ;
            }
            if (body_len <= 4096 && mid >= 0 && mid < mid_cap && mid_fd[mid] >= 0) {
                size_t h = ws_header(m, 16 + body_len);
                goim_header(m + h, (uint32_t)body_len, OP_PUSH, 0);
                memcpy(m + h + 16, start + head_len, body_len);
                n_sends++;
                if (send(mid_fd[mid], m, h + 16 + body_len, SEND_FLAGS) != (ssize_t)(h + 16 + body_len))
                    n_short++;
            }
        } else if (strncmp(start, "POST /push", 10) == 0) {
            if (count == cap) {
                cap = cap ? cap * 2 : 128;
                msgs = realloc(msgs, (size_t)cap * sizeof *msgs);
                lens = realloc(lens, (size_t)cap * sizeof *lens);
                if (!msgs || !lens) die("realloc");
            }
            size_t payload = 16 + body_len;
            uint8_t *m = malloc(payload + 10);
            if (!m) die("malloc");
            size_t h = ws_header(m, payload);
            goim_header(m + h, (uint32_t)body_len, OP_PUSH, 0);
            memcpy(m + h + 16, start + head_len, body_len);
            msgs[count] = m;
            lens[count] = h + payload;
            count++;
        } else {
            not_found++;
        }
        replies++;
        pos += head_len + body_len;
    }
    consume(c, pos);
    if (count)
        broadcast(msgs, lens, count);
    for (int i = 0; i < count; i++) free(msgs[i]);
    free(msgs);
    free(lens);
    if (replies) {
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
        static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nContent-Type: text/plain\r\n\r\nnot found";
        size_t n = (size_t)(replies - not_found) * (sizeof ok - 1) + (size_t)not_found * (sizeof nf - 1);
        char *out = malloc(n);
        if (!out) die("malloc");
        size_t off = 0;
        for (int i = 0; i < replies - not_found; i++) { memcpy(out + off, ok, sizeof ok - 1); off += sizeof ok - 1; }
        for (int i = 0; i < not_found; i++) { memcpy(out + off, nf, sizeof nf - 1); off += sizeof nf - 1; }
        /* the pusher reads its replies; a blocking-style loop is fine for a few kilobytes */
        size_t sent = 0;
        while (sent < n) {
            ssize_t w = send(c->fd, out + sent, n - sent, MSG_NOSIGNAL);
            if (w < 0) { if (errno == EAGAIN || errno == EINTR) { usleep(100); continue; } break; }
            sent += (size_t)w;
        }
        free(out);
    }
}

/* ------------------------------------------------------------------ main */

static int listen_on(const char *hostport)
{
    char host[64];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host) { fprintf(stderr, "bad address %s\n", hostport); exit(2); }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host[0] ? host : "127.0.0.1", &a.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); exit(2); }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void *idle_thread(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    const char *ws = NULL, *ctl = NULL;
    int idle_threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ws")) ws = argv[i + 1];
        else if (!strcmp(argv[i], "--control")) ctl = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--idle-threads")) idle_threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--work-us")) work_us = atol(argv[i + 1]);
    }
    if (!ws || !ctl || batch < 1 || work_us < 0) {
        fprintf(stderr, "usage: %s --ws HOST:PORT --control HOST:PORT [--batch N] [--idle-threads N] [--work-us N]\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    max_fd = (int)rl.rlim_cur;
    by_fd = calloc((size_t)max_fd, sizeof *by_fd);
    if (!by_fd) die("calloc");
    for (int i = 0; i < idle_threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, idle_thread, NULL) != 0) die("pthread_create");
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(0);
    int lws = listen_on(ws), lctl = listen_on(ctl);
    new_conn(lws, K_LISTEN_WS);
    new_conn(lctl, K_LISTEN_CTL);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[256];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 256, 1000);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            conn *c = by_fd[evs[i].data.fd];
            if (!c) continue;
            if (c->kind == K_LISTEN_WS || c->kind == K_LISTEN_CTL) {
                for (int k = 0; k < 256; k++) {
                    int fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    new_conn(fd, c->kind == K_LISTEN_WS ? K_WS : K_CTL);
                }
            } else if (c->kind == K_WS) {
                on_ws_readable(c);
            } else {
                on_ctl_readable(c);
            }
        }
    }
    fprintf(stderr, "c_broadcast: batch %d, %lld joined, %lld messages, %lld sends, %lld short sends\n",
            batch, n_joined, n_messages, n_sends, n_short);
    return 0;
}
