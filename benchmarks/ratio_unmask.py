"""Unmask vs memcpy bandwidth on a 64 KiB payload, in one run.

Both sides go through the same path: acquire the input buffer, allocate a fresh bytes object of
the same size, fill it (XOR with the rotated mask vs memcpy). Timed with time.perf_counter over
many calls; the best of several repeats is kept for each side.

    .venv/bin/python benchmarks/ratio_unmask.py [--size 65536] [--repeat 15]
"""
import argparse
import os
import sys
import time

from imgate._core.websocket import _copy_bytes, ws_unmask


def best_rate(fn, size: int, number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - t0)
    return size * number / best / 1e9


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=0.05, help="rough duration of one repeat")
    args = ap.parse_args(argv)

    data = os.urandom(args.size)
    mask = os.urandom(4)
    assert ws_unmask(ws_unmask(data, mask), mask) == data and _copy_bytes(data) == data

    # calibrate the inner loop so one repeat takes about `seconds`
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            _copy_bytes(data)
        if time.perf_counter() - t0 > args.seconds / 4:
            break
        number *= 2
    number *= 4

    # interleave the two measurements so drifts in clock speed hit both sides
    unmask_rate = copy_rate = 0.0
    for _ in range(3):
        copy_rate = max(copy_rate, best_rate(lambda: _copy_bytes(data), args.size, number, args.repeat // 3 or 1))
        unmask_rate = max(unmask_rate, best_rate(lambda: ws_unmask(data, mask), args.size, number, args.repeat // 3 or 1))

    ratio = unmask_rate / copy_rate
    print(f"payload {args.size} bytes, {number} calls per repeat, best of {args.repeat}")
    print(f"memcpy (alloc + copy)   {copy_rate:6.2f} GB/s")
    print(f"ws_unmask (alloc + xor) {unmask_rate:6.2f} GB/s")
    print(f"ratio unmask/memcpy     {ratio:6.2f}  (target >= 0.5)")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.5 else 1)
