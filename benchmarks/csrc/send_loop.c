/* The plain C baseline for RoomTable broadcasts (benchmarks/bench_room.py, benchmarks/ratios.py).
 *
 * What a hand-written C gateway does for a room push: walk an array of socket descriptors and hand the
 * same, already encoded bytes to each with one non-blocking send().  No queues, no bookkeeping, no
 * error handling beyond counting: this is the floor the RoomTable is compared against.
 *
 * Built by benchmarks/_baseline.py:  cc -O2 -shared -fPIC -o benchmarks/bin/libsendloop.so send_loop.c
 */
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>

#define SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)

/* send() the len bytes at buf once to each of the n descriptors; returns how many took all of it. */
long send_loop(const int *fds, int n, const char *buf, long len)
{
    long ok = 0;
    for (int i = 0; i < n; i++) {
        ssize_t r = send(fds[i], buf, (size_t)len, SEND_FLAGS);
        if (r == (ssize_t)len)
            ok++;
    }
    return ok;
}

/* The coalesced variant: buf holds k copies of one frame_len-byte frame back to back (prepared by the
 * caller), and each descriptor gets all k frames in a single send().  Returns how many descriptors
 * took the whole k * frame_len bytes. */
long send_loop_batched(const int *fds, int n, const char *buf, long frame_len, int k)
{
    size_t total = (size_t)frame_len * (size_t)k;
    long ok = 0;
    for (int i = 0; i < n; i++) {
        ssize_t r = send(fds[i], buf, total, SEND_FLAGS);
        if (r == (ssize_t)total)
            ok++;
    }
    return ok;
}
