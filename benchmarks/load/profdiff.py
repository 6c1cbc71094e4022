"""Function-by-function diff of two `perf report --no-children --sort dso,symbol` texts (run.py's
--profile-with perf output): each symbol's share of its server's CPU turned into CPU-us per push.

    python benchmarks/load/profdiff.py A.txt US_PER_PUSH_A B.txt US_PER_PUSH_B [--top N]

The CPU per push of each server comes from the same run (its unicast line): shares alone mislead when
the totals differ.
"""

import argparse
import re
import sys

# The two sections of the report: per dso ("   55.67%  [kernel.kallsyms]"), then per dso and symbol
# ("    6.80%  libpython3.11.so.1.0  [.] _Py_dict_lookup   -   -"); perf pads both with more columns.
_DSO = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s*$")
_SYMBOL = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)")


def shares(path, per_dso=False):
    """symbol (dso) -> percent, or dso -> percent; extension names without their ABI suffix."""
    pattern = _DSO if per_dso else _SYMBOL
    out = {}
    with open(path) as f:
        for m in filter(None, map(pattern.match, f)):
            dso = m.group(2).split(".cpython")[0]
            key = dso if per_dso else f"{m.group(3)} ({dso})"
            out[key] = out.get(key, 0.0) + float(m.group(1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("us_a", type=float)
    ap.add_argument("b")
    ap.add_argument("us_b", type=float)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--dso", action="store_true", help="per shared object instead of per function")
    args = ap.parse_args(argv)
    a, b = shares(args.a, args.dso), shares(args.b, args.dso)
    rows = []
    for key in set(a) | set(b):
        ua = a.get(key, 0.0) * args.us_a / 100
        ub = b.get(key, 0.0) * args.us_b / 100
        rows.append((ua - ub, key, a.get(key, 0.0), ua, b.get(key, 0.0), ub))
    rows.sort(reverse=True)
    print(f"| {'shared object' if args.dso else 'function (shared object)'} | A % | A us | B % | B us | A-B us |")
    print("|---|---:|---:|---:|---:|---:|")
    for d, key, pa, ua, pb, ub in rows[: args.top]:
        print(f"| `{key}` | {pa:.2f} | {ua:.2f} | {pb:.2f} | {ub:.2f} | {d:+.2f} |")
    print(f"\nsum of growth: {sum(r[0] for r in rows if r[0] > 0):.2f} us; "
          f"sum of shrink: {sum(r[0] for r in rows if r[0] < 0):.2f} us")


if __name__ == "__main__":
    sys.exit(main())
