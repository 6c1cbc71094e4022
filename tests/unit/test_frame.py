"""goim v2 frame codec: byte-exact encoding, chunking-independent decoding, every framing error."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgate.core import (
    Frame,
    FrameDecoder,
    ProtocolError,
    encode_batch,
    encode_frame,
    OP_AUTH,
    OP_HEARTBEAT,
    OP_RAW,
)


def header(pack_len, header_len=16, ver=1, op=2, seq=0):
    return struct.pack(">ihhii", pack_len, header_len, ver, op, seq)


def test_encode_is_byte_exact_goim_v2():
    body = b'{"mid":123,"room_id":"live://1000"}'
    frame = encode_frame(OP_AUTH, 1, body)
    # packLen = 16 + body, headerLen 16, ver 1, op 7, seq 1: what goim's Proto.WriteTo writes
    assert frame == struct.pack(">ihhii", 16 + len(body), 16, 1, 7, 1) + body


def test_known_heartbeat_bytes():
    assert encode_frame(OP_HEARTBEAT, 5) == bytes.fromhex("00000010 0010 0001 00000002 00000005")


def test_encode_accepts_str_memoryview_and_ver():
    assert encode_frame(1000, 2, "héllo") == encode_frame(1000, 2, "héllo".encode())
    assert encode_frame(1000, 2, memoryview(b"abc")) == encode_frame(1000, 2, b"abc")
    assert encode_frame(3, 0, b"", ver=2)[6:8] == b"\x00\x02"


def test_negative_seq_and_large_op_round_trip():
    f = FrameDecoder().feed(encode_frame(2**31 - 1, -5, b"x"))[0]
    assert (f.op, f.seq, f.body) == (2**31 - 1, -5, b"x")


def test_batch_body_is_the_inner_frames_back_to_back():
    inner = [encode_frame(1000, i, b"m%d" % i) for i in range(3)]
    batch = encode_batch(inner, seq=7)
    assert batch[:16] == struct.pack(">ihhii", 16 + sum(map(len, inner)), 16, 1, OP_RAW, 7)
    assert batch[16:] == b"".join(inner)
    (outer,) = FrameDecoder().feed(batch)
    assert outer.op == OP_RAW
    assert [f.body for f in FrameDecoder().feed(outer.body)] == [b"m0", b"m1", b"m2"]


def test_empty_batch():
    assert encode_batch([]) == struct.pack(">ihhii", 16, 16, 1, OP_RAW, 0)


def test_frame_object():
    f = Frame(1000, 3, b"hi")
    assert (f.op, f.seq, f.ver, f.body) == (1000, 3, 1, b"hi")
    assert f.encode() == encode_frame(1000, 3, b"hi")
    assert f == Frame(1000, 3, b"hi") and f != Frame(1000, 4, b"hi")
    assert "op=1000" in repr(f)


def test_many_frames_in_one_chunk_and_half_header():
    stream = b"".join(encode_frame(1000 + i, i, bytes([i]) * i) for i in range(50))
    d = FrameDecoder()
    frames = d.feed(stream[:-7])
    frames += d.feed(stream[-7:])
    assert [(f.op, f.seq, f.body) for f in frames] == [(1000 + i, i, bytes([i]) * i) for i in range(50)]
    assert d.buffered == 0


def test_byte_at_a_time():
    stream = encode_frame(7, 1, b"a" * 40) + encode_frame(2, 2)
    d = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += d.feed(stream[i : i + 1])
    assert [(f.op, f.body) for f in out] == [(7, b"a" * 40), (2, b"")]


def test_body_split_over_several_feeds_buffers_only_the_frame():
    frame = encode_frame(1000, 1, b"z" * 5000)
    d = FrameDecoder()
    assert d.feed(frame[:100]) == []
    assert d.buffered == 100
    assert d.feed(frame[100:3000]) == []
    assert d.buffered == 3000
    (f,) = d.feed(frame[3000:])
    assert f.body == b"z" * 5000 and d.buffered == 0


def test_feed_accepts_bytearray_and_memoryview():
    frame = encode_frame(1000, 1, b"xyz")
    assert FrameDecoder().feed(bytearray(frame))[0].body == b"xyz"
    assert FrameDecoder().feed(memoryview(frame))[0].body == b"xyz"


@pytest.mark.parametrize(
    "raw, message",
    [
        (header(16, header_len=15), "headerLen must be 16, got 15"),
        (header(16, header_len=-1), "headerLen must be 16, got -1"),
        (header(10), "packLen 10 is smaller than the 16-byte header"),
        (header(-5), "packLen is negative: -5"),
        (header(16 + 65537), "packLen 65553 exceeds the limit of 65552 (16 + max_body 65536)"),
        (header(2**31 - 1), "packLen 2147483647 exceeds the limit"),
    ],
)
def test_protocol_errors_name_the_field_and_value(raw, message):
    d = FrameDecoder()
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        d.feed(raw)
    # failed for good: the stream cannot be resynchronised
    with pytest.raises(ProtocolError):
        d.feed(encode_frame(2, 1))


def test_error_is_raised_when_the_header_completes_across_feeds():
    d = FrameDecoder()
    bad = header(16, header_len=99)
    assert d.feed(bad[:10]) == []
    with pytest.raises(ProtocolError, match="headerLen must be 16, got 99"):
        d.feed(bad[10:])


def test_frames_before_a_bad_header_are_not_lost():
    d = FrameDecoder()
    good = encode_frame(1000, 1, b"ok")
    with pytest.raises(ProtocolError) as e:
        d.feed(good + good + header(3))
    assert [f.body for f in e.value.frames] == [b"ok", b"ok"], "frames before the violation are handed over"
    with pytest.raises(ProtocolError) as e:
        d.feed(good)
    assert e.value.frames == []


def test_custom_limit_and_zero_limit():
    d = FrameDecoder(max_body=4)
    assert d.feed(encode_frame(1, 1, b"1234"))[0].body == b"1234"
    with pytest.raises(ProtocolError, match="exceeds the limit of 20"):
        d.feed(encode_frame(1, 1, b"12345"))
    assert FrameDecoder(max_body=0).feed(encode_frame(2, 9))[0].seq == 9
    with pytest.raises(ValueError):
        FrameDecoder(max_body=-1)


def test_garbage_is_rejected_without_buffering():
    d = FrameDecoder()
    with pytest.raises(ProtocolError):
        d.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert d.buffered == 0


frames_strategy = st.lists(
    st.tuples(
        st.integers(-(2**31), 2**31 - 1),
        st.integers(-(2**31), 2**31 - 1),
        st.binary(max_size=300),
        st.integers(0, 2**15 - 1),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(frames=frames_strategy, cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_round_trip_under_arbitrary_chunking(frames, cuts):
    stream = b"".join(encode_frame(op, seq, body, ver) for op, seq, body, ver in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
    d = FrameDecoder(max_body=300)
    out = []
    for chunk in chunks:
        out += d.feed(chunk)
    assert [(f.op, f.seq, f.body, f.ver) for f in out] == frames
    assert d.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.lists(st.integers(1, 50), max_size=10))
def test_random_bytes_never_crash_and_never_overbuffer(data, sizes):
    d = FrameDecoder(max_body=64)
    pos = 0
    for size in sizes + [len(data)]:
        try:
            d.feed(data[pos : pos + size])
        except ProtocolError:
            break
        assert d.buffered <= 16 + 64
        pos += size
