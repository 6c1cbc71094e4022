#!/usr/bin/env python3
"""Run every harness of fuzz/harnesses.py under atheris, one process each, and print what libFuzzer's
final statistics say of each run (``make fuzz`` runs this).

    python fuzz/campaign.py [--runs N] [--rss-mb MB] [--tree DIR] [--json FILE] [HARNESS ...]

``--tree DIR`` names a copy of the source tree whose extensions were built with
``IMGATE_SANITIZE=fuzz`` (clang, ``-fsanitize=fuzzer-no-link,address,undefined``): its ``src`` is
imported and atheris's ASan+libFuzzer runtime is preloaded, so libFuzzer follows the branches taken
inside the compiled parsers and ASan/UBSan stop at the first memory or undefined-behaviour error.
Without it, the normal build is fuzzed: coverage of the Python code only.
Exit status: 0 when every harness ran its inputs without a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sanitizer_env(tree: str) -> dict:
    """The environment that runs ``tree``'s instrumented extensions under atheris."""
    import atheris

    runtime = os.path.join(atheris.path(), "asan_with_fuzzer.so")
    if not os.path.exists(runtime):
        raise SystemExit(f"atheris has no {runtime}: cannot fuzz the instrumented extensions")
    env = dict(os.environ)
    env["LD_PRELOAD"] = runtime
    env["PYTHONPATH"] = os.path.join(os.path.abspath(tree), "src")
    # leaks: the interpreter never frees everything; allocator_may_return_null: a huge allocation the
    # code asked for is its MemoryError to handle, and -rss_limit_mb bounds what it really holds;
    # malloc_context_size=0: ASan records no stack per allocation. The interpreter's native stacks are
    # nearly all distinct, so with the default (30 frames) storing them took up to half the time per
    # input (perf; docs/security.md). Every error is still caught and reported where it
    # happens; only the "allocated at / freed at" stacks are left out: rerun the crash input
    # (fuzz/run.py HARNESS FILE) without this option to get them.
    env["ASAN_OPTIONS"] = "detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:malloc_context_size=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def parse_stats(text: str) -> dict:
    """libFuzzer's closing figures from its output (-print_final_stats=1)."""
    out = {}
    for name, value in re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M):
        out[name] = int(value)
    done = re.findall(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+)", text, re.M)
    if done:
        out["cov"], out["ft"] = int(done[-1][1]), int(done[-1][2])
    else:   # a crashed or unfinished run has no DONE line: the last status line tells how far it got
        status = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+) rss: (\d+)Mb", text, re.M)
        if status:
            n, cov, ft, speed, rss = map(int, status[-1])
            out["cov"], out["ft"] = cov, ft
            out.setdefault("number_of_executed_units", n)
            out.setdefault("average_exec_per_sec", speed)
            out.setdefault("peak_rss_mb", rss)
    return out


def run_one(name: str, runs: int, rss_mb: int, seconds: int, env: dict, tree: str, log_dir: str) -> dict:
    args = [sys.executable, os.path.join(tree, "fuzz", "run.py"), name, f"-runs={runs}",
            f"-rss_limit_mb={rss_mb}", "-print_final_stats=1", f"-artifact_prefix={log_dir}/{name}-"]
    if seconds:
        args.append(f"-max_total_time={seconds}")
    started = time.monotonic()
    with open(os.path.join(log_dir, f"{name}.log"), "w+") as log:
        rc = subprocess.run(args, env=env, cwd=tree, stdout=log, stderr=subprocess.STDOUT).returncode
        log.seek(0)
        stats = parse_stats(log.read())
    stats.update(harness=name, rc=rc, seconds=round(time.monotonic() - started, 1), crashed=rc != 0,
                 short=stats.get("number_of_executed_units", 0) < runs)
    return stats


def row(r: dict, log_dir: str) -> str:
    name = r["harness"]
    return (f"{name:<12} {r.get('number_of_executed_units', 0):>9} {r.get('average_exec_per_sec', 0):>7} "
            f"{r.get('cov', 0):>6} {r.get('ft', 0):>7} {r.get('peak_rss_mb', 0):>7} {r.get('seconds', ''):>6}  "
            f"{'CRASH, see ' + os.path.join(log_dir, name + '.log') if r['crashed'] else 'ok'}"
            f"{' (stopped short)' if r['short'] and not r['crashed'] else ''}")


HEADER = f"{'harness':<12} {'inputs':>9} {'exec/s':>7} {'cov':>6} {'ft':>7} {'rss MB':>7} {'s':>6}  result"


def summarize(log_dir: str, runs: int) -> int:
    """The table again from the logs of an earlier campaign (one stopped early included)."""
    print(HEADER)
    for log in sorted(f for f in os.listdir(log_dir) if f.endswith(".log")):
        with open(os.path.join(log_dir, log)) as f:
            text = f.read()
        r = parse_stats(text)
        crashed = "ERROR: libFuzzer" in text or "ERROR: AddressSanitizer" in text or "runtime error:" in text
        r.update(harness=log[:-4], crashed=crashed, short=r.get("number_of_executed_units", 0) < runs)
        print(row(r, log_dir))
    return 0


def main() -> int:
    sys.path.insert(0, HERE)
    import harnesses

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="HARNESS", help="default: all")
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--rss-mb", type=int, default=2048, help="libFuzzer's -rss_limit_mb")
    ap.add_argument("--max-seconds", type=int, default=0,
                    help="stop a harness after this long (libFuzzer's -max_total_time), its figures kept")
    ap.add_argument("--tree", help="a copy of the tree built with IMGATE_SANITIZE=fuzz")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--summarize", metavar="LOG_DIR", help="only print the table from an earlier campaign's logs")
    opts = ap.parse_args()
    if opts.summarize:
        return summarize(opts.summarize, opts.runs)
    names = opts.names or list(harnesses.HARNESSES)
    unknown = [n for n in names if n not in harnesses.HARNESSES]
    if unknown:
        ap.error(f"unknown harness {unknown}; known: {', '.join(harnesses.HARNESSES)}")
    tree = os.path.abspath(opts.tree or ROOT)
    env = sanitizer_env(tree) if opts.tree else dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    log_dir = os.path.join(tree, "build", "fuzz-logs") if not opts.tree else os.path.join(tree, "fuzz-logs")
    os.makedirs(log_dir, exist_ok=True)
    mode = "extensions instrumented (ASan+UBSan+libFuzzer)" if opts.tree else "Python coverage only"
    print(f"fuzzing {len(names)} harnesses, {opts.runs} inputs each, {mode}; logs in {log_dir}", flush=True)
    print(HEADER)
    results = []
    for name in names:
        r = run_one(name, opts.runs, opts.rss_mb, opts.max_seconds, env, tree, log_dir)
        results.append(r)
        print(row(r, log_dir), flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"mode": mode, "runs": opts.runs, "results": results}, f, indent=1)
    return 1 if any(r["crashed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
