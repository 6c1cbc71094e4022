#!/usr/bin/env python3
"""The "Done when" ratios of imgate's hot path, measured side by side in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/ratios.py [--json out.json] [--budget SECONDS]

  a. frame decoding: imgate's FrameDecoder vs the pure-Python decoder of bench_frame.py
     (1,000 frames with 32-byte bodies per feed); frames per CPU-second each.    target >= 10x
  b. unmasking vs memcpy on 64 KiB: ws_unmask(payload, mask) vs a copy of the same size done the same
     way (allocate the output, copy into it); GB per CPU-second each.           target >= 0.5
  c. broadcast CPU: RoomTable broadcast + flush of one 64-byte frame to 2,000 loopback TCP members vs
     the C send_loop over the same sockets; CPU-us per broadcast, imgate / C.   target <= 1.3
     Info only: 20 frames coalesced per member (20 broadcasts, one flush) vs send_loop_batched.

Method: the machine is shared and noisy, so the two sides of a comparison run alternately in one
process (A B, then B A, ...), each round timed with the thread's CPU clock (time.thread_time: user +
system seconds of this thread, which includes the kernel's send path). The ratio is computed from the
per-side medians; the best-of ratio is shown next to it. Sockets are drained between rounds, outside
the measured region. The whole run stays within --budget seconds of measuring (default 75) plus setup.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
try:
    import imgate  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src"))

# the pure-Python reference codec lives in bench_frame.py: both tools time the same code
from bench_frame import PyFrameDecoder, make_bodies, make_chunk  # noqa: E402

cpu_now = time.thread_time
TARGETS = {"decode": (">=", 10.0), "unmask": (">=", 0.5), "broadcast": ("<=", 1.3)}


# ------------------------------------------------------------------ measurement core


class Side:
    def __init__(self, name, fn, units, unit_name):
        self.name = name
        self.fn = fn              # one measured round
        self.units = units        # work per round (frames, bytes, broadcasts)
        self.unit_name = unit_name
        self.cpu = []             # CPU seconds per round
        self.wall = []

    def per_unit(self, pick):
        return pick(self.cpu) / self.units

    def summary(self):
        return {
            "name": self.name,
            "rounds": len(self.cpu),
            "units_per_round": self.units,
            "unit": self.unit_name,
            "cpu_s_per_round_median": statistics.median(self.cpu),
            "cpu_s_per_round_min": min(self.cpu),
            "wall_s_per_round_median": statistics.median(self.wall),
            "cpu_s_per_round": self.cpu,
        }


def interleave(a, b, *, budget, max_rounds, min_rounds=5, setup=None, between=None):
    """Alternate A and B rounds (A B, B A, A B, ...) until max_rounds pairs or the time budget."""
    gc.collect()
    deadline = time.monotonic() + budget
    for i in range(max_rounds):
        for side in ((a, b) if i % 2 == 0 else (b, a)):
            if setup is not None:
                setup()
            w0 = time.perf_counter()
            c0 = cpu_now()
            side.fn()
            c1 = cpu_now()
            w1 = time.perf_counter()
            side.cpu.append(c1 - c0)
            side.wall.append(w1 - w0)
            if between is not None:
                between(side)
        if i + 1 >= min_rounds and time.monotonic() > deadline:
            break


def repeat(fn, arg, reps):
    def run():
        for _ in range(reps):
            fn(arg)
    return run


def calibrate(fn, arg, target_s):
    """How many calls of fn(arg) make a round of about target_s CPU seconds."""
    fn(arg)
    best = float("inf")
    for _ in range(3):
        c0 = cpu_now()
        fn(arg)
        best = min(best, cpu_now() - c0)
    return max(1, int(target_s / max(best, 1e-7)))


def verdict(key, ratio):
    if ratio is None:
        return "n/a"
    op, target = TARGETS[key]
    ok = ratio >= target if op == ">=" else ratio <= target
    return "ok" if ok else "MISS"


# ------------------------------------------------------------------ a. frame decoding


def measure_decode(budget):
    from bench_frame import FrameDecoder

    bodies = make_bodies()
    chunk = make_chunk()
    n = len(bodies)
    # both produce the same frames from the same bytes
    for dec in (FrameDecoder(), PyFrameDecoder()):
        frames = dec.feed(chunk)
        assert [(f.ver, f.op, f.seq, f.body) for f in frames] == [(1, 4, i, b) for i, b in enumerate(bodies)]

    c_dec, p_dec = FrameDecoder(), PyFrameDecoder()
    c_reps = calibrate(c_dec.feed, chunk, 0.004)
    p_reps = calibrate(p_dec.feed, chunk, 0.004)
    a = Side("imgate FrameDecoder", repeat(c_dec.feed, chunk, c_reps), n * c_reps, "frame")
    b = Side("pure-Python decoder", repeat(p_dec.feed, chunk, p_reps), n * p_reps, "frame")
    interleave(a, b, budget=budget, max_rounds=400)
    res = {
        "imgate_frames_per_cpu_s": 1 / a.per_unit(statistics.median),
        "python_frames_per_cpu_s": 1 / b.per_unit(statistics.median),
        "imgate_frames_per_cpu_s_best": 1 / a.per_unit(min),
        "python_frames_per_cpu_s_best": 1 / b.per_unit(min),
    }
    res["ratio"] = res["imgate_frames_per_cpu_s"] / res["python_frames_per_cpu_s"]
    res["ratio_best"] = res["imgate_frames_per_cpu_s_best"] / res["python_frames_per_cpu_s_best"]
    res["sides"] = [a.summary(), b.summary()]
    return res


# ------------------------------------------------------------------ b. unmask vs memcpy


def measure_unmask(budget):
    try:
        from imgate._core import websocket as ws
        ws_unmask = ws.ws_unmask
    except (ImportError, AttributeError) as exc:
        return {"error": f"websocket module not importable: {exc}"}

    size = 64 * 1024
    payload = bytes((i * 131 + 7) & 0xFF for i in range(size))
    mask = b"\x37\xfa\x21\x3d"
    expect = bytes(p ^ mask[i & 3] for i, p in enumerate(payload))
    if ws_unmask(payload, mask) != expect:
        return {"error": "ws_unmask returned wrong bytes"}

    # The copy baseline: the colleague's _copy_bytes (same buffer handling and allocation as ws_unmask,
    # memcpy instead of XOR) when present; else bytes(bytearray) (one allocation + one memcpy).
    copy_fn = getattr(ws, "_copy_bytes", None)
    if copy_fn is not None:
        copy_arg, copy_name = payload, "websocket._copy_bytes (alloc + memcpy)"
    else:
        copy_fn, copy_arg, copy_name = bytes, bytearray(payload), "bytes(bytearray) (alloc + memcpy)"
    assert copy_fn(copy_arg) == payload

    def unmask_once(p):
        ws_unmask(p, mask)

    u_reps = calibrate(unmask_once, payload, 0.003)
    m_reps = calibrate(copy_fn, copy_arg, 0.003)
    a = Side("ws_unmask", repeat(unmask_once, payload, u_reps), size * u_reps, "byte")
    b = Side(copy_name, repeat(copy_fn, copy_arg, m_reps), size * m_reps, "byte")
    interleave(a, b, budget=budget, max_rounds=400)
    res = {
        "copy_baseline": copy_name,
        "unmask_gb_per_cpu_s": 1e-9 / a.per_unit(statistics.median),
        "memcpy_gb_per_cpu_s": 1e-9 / b.per_unit(statistics.median),
        "unmask_gb_per_cpu_s_best": 1e-9 / a.per_unit(min),
        "memcpy_gb_per_cpu_s_best": 1e-9 / b.per_unit(min),
    }
    res["ratio"] = res["unmask_gb_per_cpu_s"] / res["memcpy_gb_per_cpu_s"]
    res["ratio_best"] = res["unmask_gb_per_cpu_s_best"] / res["memcpy_gb_per_cpu_s_best"]
    res["sides"] = [a.summary(), b.summary()]
    return res


# ------------------------------------------------------------------ c. broadcast CPU


def measure_broadcast(budget_single, budget_coalesced, members):
    from _baseline import SendLoop
    from bench_room import COALESCE, FRAME, ROOM, LoopbackRoom, RoomTable

    if RoomTable is None:
        return {"error": "imgate.core.RoomTable not importable (extensions not built?)"}, None

    lo = LoopbackRoom(members)
    table = None
    try:
        table = lo.make_table()
        c_loop = SendLoop(lo.fds)
        broadcast, flush = table.broadcast, table.flush
        split = {"queue": [], "flush": []}

        def imgate_one():
            c0 = cpu_now()
            broadcast(ROOM, FRAME)
            c1 = cpu_now()
            flush()
            split["queue"].append(c1 - c0)
            split["flush"].append(cpu_now() - c1)

        def imgate_many():
            for _ in range(COALESCE):
                broadcast(ROOM, FRAME)
            flush()

        sent = []

        def c_one():
            sent.append(c_loop.send_each(FRAME))

        batch = FRAME * COALESCE

        def c_many():
            sent.append(c_loop.send_each_batched(batch, len(FRAME), COALESCE))

        # correctness, once per path: every client got exactly the bytes sent, one write per member
        lo.drain()
        w0 = table.stats()["write_calls"]
        imgate_one()
        if table.stats()["write_calls"] - w0 != members:
            raise AssertionError("RoomTable did not make exactly one write per member")
        lo.expect_each(FRAME)
        c_one()
        lo.expect_each(FRAME)
        w0 = table.stats()["write_calls"]
        imgate_many()
        if table.stats()["write_calls"] - w0 != members:
            raise AssertionError("RoomTable did not coalesce 20 frames into one write per member")
        lo.expect_each(batch)
        c_many()
        lo.expect_each(batch)
        if any(s != members for s in sent):
            raise AssertionError(f"send_loop completed {sent} sends, expected {members} each")
        sent.clear()
        split["queue"].clear()
        split["flush"].clear()

        stats0 = table.stats()
        a = Side("imgate RoomTable broadcast+flush", imgate_one, 1, "broadcast")
        b = Side("C send_loop", c_one, 1, "broadcast")
        interleave(a, b, budget=budget_single, max_rounds=150, setup=lo.drain)
        single = {
            "members": members,
            "frame_bytes": len(FRAME),
            "imgate_cpu_us": a.per_unit(statistics.median) * 1e6,
            "c_cpu_us": b.per_unit(statistics.median) * 1e6,
            "imgate_cpu_us_best": a.per_unit(min) * 1e6,
            "c_cpu_us_best": b.per_unit(min) * 1e6,
            "imgate_queue_cpu_us": statistics.median(split["queue"]) * 1e6,
            "imgate_flush_cpu_us": statistics.median(split["flush"]) * 1e6,
        }
        single["ratio"] = single["imgate_cpu_us"] / single["c_cpu_us"]
        single["ratio_best"] = single["imgate_cpu_us_best"] / single["c_cpu_us_best"]
        single["imgate_deliveries_per_cpu_s"] = members / (single["imgate_cpu_us"] * 1e-6)
        single["c_deliveries_per_cpu_s"] = members / (single["c_cpu_us"] * 1e-6)
        single["sides"] = [a.summary(), b.summary()]

        a = Side("imgate 20x broadcast + 1 flush", imgate_many, 1, "20 broadcasts")
        b = Side("C send_loop_batched (20 frames/send)", c_many, 1, "20 broadcasts")
        interleave(a, b, budget=budget_coalesced, max_rounds=150, setup=lo.drain)
        many = {
            "members": members,
            "frames_per_member": COALESCE,
            "imgate_cpu_us": a.per_unit(statistics.median) * 1e6,
            "c_cpu_us": b.per_unit(statistics.median) * 1e6,
            "imgate_cpu_us_best": a.per_unit(min) * 1e6,
            "c_cpu_us_best": b.per_unit(min) * 1e6,
        }
        many["ratio"] = many["imgate_cpu_us"] / many["c_cpu_us"]
        many["ratio_best"] = many["imgate_cpu_us_best"] / many["c_cpu_us_best"]
        many["imgate_deliveries_per_cpu_s"] = members * COALESCE / (many["imgate_cpu_us"] * 1e-6)
        many["c_deliveries_per_cpu_s"] = members * COALESCE / (many["c_cpu_us"] * 1e-6)
        many["sides"] = [a.summary(), b.summary()]

        stats1 = table.stats()
        incomplete = sum(1 for s in sent if s != members)
        if stats1["overflows"] != stats0["overflows"] or incomplete:
            raise AssertionError(f"lost output during measurement: overflows {stats1['overflows']}, "
                                 f"incomplete C rounds {incomplete}")
        single["table_stats"] = stats1
        return single, many
    finally:
        if table is not None:
            for i in range(members):
                table.remove(i)
        lo.close()


# ------------------------------------------------------------------ report


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--budget", type=float, default=75.0, help="seconds of measuring in total (default 75)")
    ap.add_argument("--members", type=int, default=2000)
    args = ap.parse_args(argv)

    share = {"decode": 0.16, "unmask": 0.14, "broadcast": 0.40, "coalesced": 0.30}
    t_start = time.monotonic()
    results = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "clock": "time.thread_time (thread CPU seconds, user+system)",
        },
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
    }

    print("measuring a. frame decoding ...", file=sys.stderr, flush=True)
    results["decode"] = dec = measure_decode(args.budget * share["decode"])
    print("measuring b. unmask vs memcpy ...", file=sys.stderr, flush=True)
    results["unmask"] = unm = measure_unmask(args.budget * share["unmask"])
    print(f"measuring c. broadcast to {args.members} loopback TCP members ...", file=sys.stderr, flush=True)
    try:
        bc, bc20 = measure_broadcast(args.budget * share["broadcast"], args.budget * share["coalesced"],
                                     args.members)
    except Exception as exc:  # report what was measured, then fail loudly
        bc, bc20 = {"error": f"{type(exc).__name__}: {exc}"}, None
    results["broadcast"] = bc
    results["broadcast_coalesced"] = bc20 or {"error": bc.get("error", "not measured")}
    results["elapsed_s"] = time.monotonic() - t_start

    rows = []
    rows.append(("a. decode 1000x32B frames", "imgate / pure-Python",
                 f"{fmt(dec['imgate_frames_per_cpu_s'] / 1e6, '.2f')} vs "
                 f"{fmt(dec['python_frames_per_cpu_s'] / 1e6, '.3f')} Mframes/CPU-s",
                 dec["ratio"], dec["ratio_best"], ">= 10", verdict("decode", dec["ratio"])))
    if "error" in unm:
        rows.append(("b. unmask 64 KiB", "unmask / memcpy", unm["error"], None, None, ">= 0.5", "n/a"))
    else:
        rows.append(("b. unmask 64 KiB", "unmask / memcpy",
                     f"{unm['unmask_gb_per_cpu_s']:.2f} vs {unm['memcpy_gb_per_cpu_s']:.2f} GB/CPU-s",
                     unm["ratio"], unm["ratio_best"], ">= 0.5", verdict("unmask", unm["ratio"])))
    if "error" in bc:
        rows.append(("c. broadcast 1 frame", "imgate / C", bc["error"], None, None, "<= 1.3", "n/a"))
    else:
        rows.append((f"c. broadcast 64B to {bc['members']}", "imgate / C",
                     f"{bc['imgate_cpu_us']:.0f} vs {bc['c_cpu_us']:.0f} CPU-us/broadcast",
                     bc["ratio"], bc["ratio_best"], "<= 1.3", verdict("broadcast", bc["ratio"])))
    if bc20 and "error" not in bc20:
        rows.append((f"   20 coalesced to {bc20['members']}", "imgate / C (info)",
                     f"{bc20['imgate_cpu_us']:.0f} vs {bc20['c_cpu_us']:.0f} CPU-us/20 broadcasts",
                     bc20["ratio"], bc20["ratio_best"], "info", "-"))

    head = ("measure", "ratio of", "each side (median)", "ratio", "best-of", "target", "")
    cells = [head] + [tuple(fmt(c, ".2f") if i in (3, 4) else str(c) for i, c in enumerate(r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    if "error" not in bc:
        print(f"\nbroadcast detail: imgate queue {bc['imgate_queue_cpu_us']:.0f} us + flush "
              f"{bc['imgate_flush_cpu_us']:.0f} us; deliveries per CPU-second: imgate "
              f"{bc['imgate_deliveries_per_cpu_s'] / 1e3:.0f}k, C {bc['c_deliveries_per_cpu_s'] / 1e3:.0f}k"
              + (f"; coalesced x20: imgate {bc20['imgate_deliveries_per_cpu_s'] / 1e6:.2f}M, "
                 f"C {bc20['c_deliveries_per_cpu_s'] / 1e6:.2f}M" if bc20 and "error" not in bc20 else ""))
    rounds = [len(s["cpu_s_per_round"]) for part in (dec, unm, bc, bc20 or {}) for s in part.get("sides", [])]
    print(f"rounds per side: {rounds}; total {results['elapsed_s']:.0f} s "
          f"(CPU time of this thread; ratios from per-side medians, A/B interleaved)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
