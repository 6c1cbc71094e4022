"""Run `imgate serve` with the cyclic garbage collector's pauses recorded (run.py --imgate-gc-trace).

    python benchmarks/load/gc_trace.py OUT.json serve --auth none ...

Every collection's generation, duration and collected/uncollectable counts go through `gc.callbacks`;
on exit (SIGTERM, as run.py stops servers) a summary per generation and the longest pauses are written
to OUT.json. A diagnostic: the callbacks cost a little per collection.
"""

import gc
import json
import os
import sys
import time

out_path = sys.argv[1]
argv = sys.argv[2:]
pauses = []          # (generation, seconds, collected, monotonic at start)
_t0 = [0.0]


def on_gc(phase, info):
    if phase == "start":
        _t0[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - _t0[0], info["collected"], time.monotonic()))


def dump():
    summary = {}
    for gen in (0, 1, 2):
        d = [p[1] for p in pauses if p[0] == gen]
        if d:
            d.sort()
            summary[f"gen{gen}"] = {"count": len(d), "total_s": sum(d), "max_ms": d[-1] * 1000,
                                    "p50_ms": d[len(d) // 2] * 1000, "p99_ms": d[int(len(d) * 0.99)] * 1000}
    longest = sorted(pauses, key=lambda p: -p[1])[:30]
    with open(out_path, "w") as f:
        json.dump({"summary": summary, "thresholds": gc.get_threshold(), "objects_tracked": len(gc.get_objects()),
                   "longest": [{"gen": g, "ms": s * 1000, "collected": c, "at": t} for g, s, c, t in longest]},
                  f, indent=1)


gc.callbacks.append(on_gc)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src"))
    from imgate.cli import main

    try:
        sys.exit(main(argv))
    finally:
        dump()
