"""A short bounded run of every fuzz harness (fuzz/harnesses.py) in `make test`: seeded random inputs
and mutations of the seeds; `make fuzz` runs the same harnesses long under atheris."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))

import harnesses  # noqa: E402

RUNS = 3000


def inputs(name: str, rnd: random.Random):
    seeds = harnesses.SEEDS[name]
    for i in range(RUNS):
        if i % 2:
            yield rnd.randbytes(rnd.randrange(0, 300))
            continue
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 8)):   # flip, insert or cut a few bytes
            at = rnd.randrange(0, len(data) + 1)
            kind = rnd.randrange(3)
            if kind == 0 and at < len(data):
                data[at] = rnd.randrange(256)
            elif kind == 1:
                data[at:at] = rnd.randbytes(rnd.randrange(1, 9))
            else:
                del data[at:at + rnd.randrange(1, 9)]
        yield bytes(data)


@pytest.mark.parametrize("name", sorted(harnesses.HARNESSES))
def test_harness_survives_bounded_fuzzing(name):
    rnd = random.Random(f"imgate-{name}")
    one = harnesses.HARNESSES[name]

    for data in inputs(name, rnd):
        try:
            one(data)
        except AssertionError as e:
            raise AssertionError(f"{name} failed on {data!r}: {e}") from None


def test_a_harness_catches_a_broken_parser(monkeypatch):
    """The harness is an oracle, not a formality: a decoder that mangles a body is caught."""
    from imgate.core import Frame

    real = harnesses.FrameDecoder

    class Mangling:   # hands out each body with one byte too many
        def __init__(self, max_body):
            self.inner = real(max_body=max_body)

        def feed(self, data):
            return [Frame(f.op, f.seq, f.body + b"!", f.ver) for f in self.inner.feed(data)]

    monkeypatch.setattr(harnesses, "FrameDecoder", Mangling)
    with pytest.raises(AssertionError):
        harnesses.one_goim_frames(harnesses.SEEDS["goim_frames"][0])
