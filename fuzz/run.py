#!/usr/bin/env python3
"""Run one fuzz harness under atheris (``make fuzz`` runs each for FUZZ_RUNS inputs).

    python fuzz/run.py HARNESS [atheris/libFuzzer options, e.g. -runs=1000000 -rss_limit_mb=1024]

HARNESS is one of fuzz/harnesses.py's HARNESSES. The seeds are written to a corpus directory under
fuzz/corpus/HARNESS first. ``run.py HARNESS FILE...`` runs the harness once on each file instead (a
crash's saved input, to see it again). libFuzzer's -rss_limit_mb bounds memory; a crash leaves its
input in the current directory (or under -artifact_prefix).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import atheris  # noqa: E402

# only the project's code is instrumented: asyncio, json and the rest of the standard library would cost
# every input several times over and tell the fuzzer nothing about imgate. The harnesses are not
# instrumented either: their branches are the checks on what a parser answered, which the parser's own
# coverage already tells apart, and instrumenting them made an input cost 1.5-2x (docs/security.md).
with atheris.instrument_imports(include=["imgate"]):
    import harnesses  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in harnesses.HARNESSES:
        print(f"usage: run.py {{{','.join(harnesses.HARNESSES)}}} [libFuzzer options]", file=sys.stderr)
        return 2
    name = sys.argv[1]
    corpus = os.path.join(HERE, "corpus", name)
    os.makedirs(corpus, exist_ok=True)
    for i, seed in enumerate(harnesses.SEEDS.get(name, [])):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    args = sys.argv[2:]
    if name in harnesses.MAX_LEN and not any(a.startswith("-max_len=") for a in args):
        args.append(f"-max_len={harnesses.MAX_LEN[name]}")
    # files named on the command line (a crash's saved input) are run once each, without the corpus
    inputs = [a for a in args if not a.startswith("-")]
    atheris.Setup([sys.argv[0], *args] + ([] if inputs else [corpus]), harnesses.HARNESSES[name])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
