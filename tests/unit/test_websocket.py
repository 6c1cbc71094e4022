"""RFC 6455 codec: client frame parser, server frame encoder, unmasking, UTF-8 (the handshake: test_ws_handshake)."""
import os
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgate._core.websocket import (
    WS_OP_BINARY,
    WS_OP_CLOSE,
    WS_OP_CONT,
    WS_OP_PING,
    WS_OP_PONG,
    WS_OP_TEXT,
    WebSocketError,
    WebSocketParser,
    _utf8_valid,
    encode_ws_close,
    encode_ws_frame,
    ws_unmask,
)

RFC_MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def naive_xor(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ mask[(offset + i) % 4] for i, b in enumerate(data))


def client_frame(payload: bytes, opcode: int = WS_OP_BINARY, fin: bool = True,
                 mask: bytes = RFC_MASK, rsv: int = 0, length: int | None = None,
                 form: str | None = None) -> bytes:
    """A masked client frame, built independently of the code under test."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    if form is None:
        form = "7" if n < 126 else ("16" if n < 65536 else "64")
    if form == "7":
        head = bytes([b0, 0x80 | n])
    elif form == "16":
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + naive_xor(payload, mask)


def feed_all(parser: WebSocketParser, data: bytes, sizes=None):
    """Feed data in pieces of the given sizes (cycled); return all messages."""
    out = []
    if not sizes:
        return parser.feed(data)
    i = k = 0
    while i < len(data):
        step = max(1, sizes[k % len(sizes)])
        out += parser.feed(data[i:i + step])
        i += step
        k += 1
    return out


# --------------------------------------------------------------------------------------------
# RFC 6455 section 5.7 examples


def test_rfc_unmasked_text_hello_encoding():
    assert encode_ws_frame(b"Hello", WS_OP_TEXT) == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    assert encode_ws_frame("Hello", WS_OP_TEXT) == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def test_rfc_masked_text_hello_parsed():
    wire = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert client_frame(b"Hello", WS_OP_TEXT) == wire
    assert WebSocketParser().feed(wire) == [(WS_OP_TEXT, b"Hello")]


def test_rfc_fragmented_text_encoding_and_masked_parse():
    assert encode_ws_frame(b"Hel", WS_OP_TEXT, fin=False) == bytes([0x01, 0x03, 0x48, 0x65, 0x6C])
    assert encode_ws_frame(b"lo", WS_OP_CONT) == bytes([0x80, 0x02, 0x6C, 0x6F])
    wire = client_frame(b"Hel", WS_OP_TEXT, fin=False) + client_frame(b"lo", WS_OP_CONT)
    assert WebSocketParser().feed(wire) == [(WS_OP_TEXT, b"Hello")]


def test_rfc_ping_and_pong():
    assert encode_ws_frame(b"Hello", WS_OP_PING) == bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    assert encode_ws_frame(b"Hello", WS_OP_PONG) == bytes([0x8A, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    # masked ping "Hello" from a client -> unmasked pong "Hello" queued
    p = WebSocketParser()
    assert p.feed(client_frame(b"Hello", WS_OP_PING)) == []
    assert p.take_output() == bytes([0x8A, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    assert p.take_output() == b""
    # masked pong "Hello" (the RFC's bytes) is consumed, not delivered
    wire = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert p.feed(wire) == []
    assert p.last_pong == b"Hello"
    assert p.pongs_received == 1
    assert p.take_output() == b""


def test_rfc_256_bytes_binary():
    payload = os.urandom(256)
    frame = encode_ws_frame(payload)
    assert frame[:4] == bytes([0x82, 0x7E, 0x01, 0x00])
    assert frame[4:] == payload and len(frame) == 260
    wire = client_frame(payload)
    assert wire[:2] == bytes([0x82, 0xFE]) and wire[2:4] == b"\x01\x00"
    assert WebSocketParser().feed(wire) == [(WS_OP_BINARY, payload)]


def test_rfc_64k_binary():
    payload = os.urandom(65536)
    frame = encode_ws_frame(payload)
    assert frame[:10] == bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
    assert frame[10:] == payload
    wire = client_frame(payload)
    assert wire[:2] == bytes([0x82, 0xFF])
    assert WebSocketParser().feed(wire) == [(WS_OP_BINARY, payload)]
    # the same split into awkward pieces
    assert feed_all(WebSocketParser(), wire, [1, 3, 7, 4093, 11, 30000]) == [(WS_OP_BINARY, payload)]


@pytest.mark.parametrize("n, head", [(0, b"\x82\x00"), (125, b"\x82\x7d"), (126, b"\x82\x7e\x00\x7e"),
                                     (65535, b"\x82\x7e\xff\xff"),
                                     (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00")])
def test_encode_length_boundaries(n, head):
    frame = encode_ws_frame(b"a" * n)
    assert frame[:len(head)] == head and len(frame) == len(head) + n


def test_non_minimal_lengths_are_accepted():
    # 16- and 64-bit length forms carrying small lengths are tolerated (lenient reader)
    p = WebSocketParser()
    wire = client_frame(b"abc", form="16") + client_frame(b"defg", form="64")
    assert p.feed(wire) == [(WS_OP_BINARY, b"abc"), (WS_OP_BINARY, b"defg")]


def test_inputs_bytearray_and_memoryview():
    wire = client_frame(b"x" * 300) + client_frame(b"yz", WS_OP_TEXT)
    expected = [(WS_OP_BINARY, b"x" * 300), (WS_OP_TEXT, b"yz")]
    assert WebSocketParser().feed(bytearray(wire)) == expected
    assert WebSocketParser().feed(memoryview(wire)) == expected
    mv = memoryview(b"junk" + wire)[4:]
    assert WebSocketParser().feed(mv) == expected


def test_empty_messages():
    p = WebSocketParser()
    wire = (client_frame(b"", WS_OP_TEXT) + client_frame(b"", WS_OP_BINARY, fin=False)
            + client_frame(b"", WS_OP_CONT))
    assert p.feed(wire) == [(WS_OP_TEXT, b""), (WS_OP_BINARY, b"")]
    assert p.feed(b"") == []


def test_control_frames_between_fragments():
    p = WebSocketParser()
    wire = (client_frame(b"one ", WS_OP_TEXT, fin=False) + client_frame(b"p1", WS_OP_PING)
            + client_frame(b"two ", WS_OP_CONT, fin=False) + client_frame(b"", WS_OP_PONG)
            + client_frame(b"three", WS_OP_CONT) + client_frame(b"\x00\x01", WS_OP_BINARY))
    for sizes in (None, [1], [5, 2]):
        p = WebSocketParser()
        assert feed_all(p, wire, sizes) == [(WS_OP_TEXT, b"one two three"), (WS_OP_BINARY, b"\x00\x01")]
        assert p.take_output() == b"\x8a\x02p1"
        assert p.last_pong == b""


def test_many_frames_in_one_chunk_and_pong_queue_order():
    frames = [client_frame(bytes([i]) * i) for i in range(50)]
    pings = [client_frame(b"a", WS_OP_PING), client_frame(b"bb", WS_OP_PING)]
    p = WebSocketParser()
    out = p.feed(b"".join(frames[:25]) + pings[0] + b"".join(frames[25:]) + pings[1])
    assert out == [(WS_OP_BINARY, bytes([i]) * i) for i in range(50)]
    assert p.take_output() == b"\x8a\x01a\x8a\x02bb"


# --------------------------------------------------------------------------------------------
# close handling


def test_close_with_code_and_reason_is_echoed():
    p = WebSocketParser()
    wire = client_frame(b"hi") + client_frame(struct.pack(">H", 1001) + "bye ✓".encode(), WS_OP_CLOSE)
    assert p.feed(wire + client_frame(b"after")) == [(WS_OP_BINARY, b"hi")]
    assert p.closed and p.close_code == 1001 and p.close_reason == "bye ✓"
    assert p.take_output() == b"\x88\x02\x03\xe9"
    # input after the close is ignored
    assert p.feed(client_frame(b"more")) == []
    assert p.feed(b"\xff\xff garbage") == []


def test_empty_close_is_echoed_empty():
    p = WebSocketParser()
    assert p.feed(client_frame(b"", WS_OP_CLOSE)) == []
    assert p.closed and p.close_code is None and p.close_reason == ""
    assert p.take_output() == b"\x88\x00"


def test_close_discards_message_in_progress():
    p = WebSocketParser()
    p.feed(client_frame(b"part", WS_OP_TEXT, fin=False))
    assert p.feed(client_frame(struct.pack(">H", 1000), WS_OP_CLOSE)) == []
    assert p.closed and p.close_code == 1000


VALID_CLOSE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
               4000, 4999]
INVALID_CLOSE = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CLOSE)
def test_valid_close_codes(code):
    p = WebSocketParser()
    p.feed(client_frame(struct.pack(">H", code) + b"ok", WS_OP_CLOSE))
    assert p.closed and p.close_code == code and p.close_reason == "ok"
    assert p.take_output() == encode_ws_close(code)


@pytest.mark.parametrize("code", INVALID_CLOSE)
def test_invalid_close_codes(code):
    p = WebSocketParser()
    with pytest.raises(WebSocketError) as ei:
        p.feed(client_frame(struct.pack(">H", code), WS_OP_CLOSE))
    assert ei.value.code == 1002
    assert f"invalid close code {code}" in str(ei.value)
    assert not p.closed


def test_one_byte_close_payload():
    with pytest.raises(WebSocketError) as ei:
        WebSocketParser().feed(client_frame(b"\x03", WS_OP_CLOSE))
    assert ei.value.code == 1002 and "1-byte" in str(ei.value)


def test_close_reason_invalid_utf8():
    with pytest.raises(WebSocketError) as ei:
        WebSocketParser().feed(client_frame(b"\x03\xe8\xc3\x28", WS_OP_CLOSE))
    assert ei.value.code == 1007 and "close reason" in str(ei.value)


# --------------------------------------------------------------------------------------------
# protocol errors


BAD_FRAMES = [
    (bytes([0x82, 0x03]) + b"abc", 1002, "unmasked client frame"),
    (client_frame(b"a", rsv=4), 1002, "RSV1 set without a negotiated extension"),
    (client_frame(b"a", rsv=2), 1002, "RSV2 set"),
    (client_frame(b"a", rsv=1), 1002, "RSV3 set"),
    (client_frame(b"a", rsv=5), 1002, "RSV1 and RSV3 set"),
    (client_frame(b"a", opcode=3), 1002, "reserved opcode 3"),
    (client_frame(b"a", opcode=7), 1002, "reserved opcode 7"),
    (client_frame(b"a", opcode=11), 1002, "reserved opcode 11"),
    (client_frame(b"a", opcode=15), 1002, "reserved opcode 15"),
    (client_frame(b"a", opcode=WS_OP_CONT), 1002, "continuation frame without a message in progress"),
    (client_frame(b"a", WS_OP_TEXT, fin=False) + client_frame(b"b", WS_OP_BINARY), 1002,
     "new data frame while a fragmented message is in progress"),
    (client_frame(b"a" * 126, WS_OP_PING), 1002, "control frame payload 126 > 125"),
    (client_frame(b"a" * 200, WS_OP_CLOSE), 1002, "control frame payload 200 > 125"),
    (client_frame(b"a", WS_OP_PING, fin=False), 1002, "fragmented control frame"),
    (client_frame(b"a", WS_OP_PONG, fin=False), 1002, "fragmented control frame"),
    (bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + RFC_MASK, 1002, "most significant bit"),
    (bytes([0x82, 0xFF]) + struct.pack(">Q", (1 << 64) - 1) + RFC_MASK, 1002, "most significant bit"),
]


@pytest.mark.parametrize("wire, code, text", BAD_FRAMES)
@pytest.mark.parametrize("chunked", [False, True])
def test_protocol_errors(wire, code, text, chunked):
    p = WebSocketParser()
    with pytest.raises(WebSocketError) as ei:
        feed_all(p, wire, [1] if chunked else None)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.code == code
    assert text in str(err)
    assert p.failed
    # the close frame to answer with carries the code and the reason
    cf = err.close_frame()
    assert cf[0] == 0x88 and struct.unpack(">H", cf[2:4])[0] == code
    assert cf[4:].decode() == str(err)
    # the parser stays failed
    with pytest.raises(WebSocketError) as again:
        p.feed(client_frame(b"fine"))
    assert again.value.code == code


def test_unmasked_frame_fails_on_its_first_two_bytes():
    with pytest.raises(WebSocketError, match="unmasked"):
        WebSocketParser().feed(b"\x82\x7f")  # extended length not even sent yet


def test_error_keeps_messages_parsed_before_it():
    p = WebSocketParser()
    with pytest.raises(WebSocketError) as ei:
        p.feed(client_frame(b"one") + client_frame(b"two") + client_frame(b"x", opcode=4))
    assert ei.value.messages == [(WS_OP_BINARY, b"one"), (WS_OP_BINARY, b"two")]


def test_close_frame_reason_truncated_to_fit():
    err = WebSocketError("x" * 300, 1009)
    frame = err.close_frame()
    assert len(frame) == 2 + 125 and frame[1] == 125
    assert frame[2:4] == b"\x03\xf1"


# --------------------------------------------------------------------------------------------
# size limits


def test_oversized_single_frame_header_fails_immediately():
    p = WebSocketParser()
    head = bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 30) + RFC_MASK
    with pytest.raises(WebSocketError) as ei:
        p.feed(head)  # only the header: no payload is waited for or buffered
    assert ei.value.code == 1009
    assert str(ei.value) == "message of 1073741824 bytes exceeds max_message 1048576"


def test_oversized_message_example_text():
    p = WebSocketParser()
    with pytest.raises(WebSocketError, match="message of 2000000 bytes exceeds max_message 1048576"):
        p.feed(bytes([0x82, 0xFF]) + struct.pack(">Q", 2_000_000) + RFC_MASK + b"abc")


def test_max_message_boundary():
    p = WebSocketParser(max_message=100)
    assert p.feed(client_frame(b"a" * 100)) == [(WS_OP_BINARY, b"a" * 100)]
    with pytest.raises(WebSocketError) as ei:
        p.feed(client_frame(b"a" * 101))
    assert ei.value.code == 1009


def test_oversized_via_fragments():
    p = WebSocketParser(max_message=1000)
    p.feed(client_frame(b"a" * 600, WS_OP_BINARY, fin=False))
    p.feed(client_frame(b"a" * 400, WS_OP_CONT, fin=False))  # exactly at the limit: fine
    with pytest.raises(WebSocketError) as ei:
        # header of the next fragment alone is enough to know
        p.feed(client_frame(b"a", WS_OP_CONT)[:6])
    assert ei.value.code == 1009
    assert "message of 1001 bytes exceeds max_message 1000" in str(ei.value)


def test_control_frames_do_not_count_towards_max_message():
    p = WebSocketParser(max_message=10)
    wire = (client_frame(b"a" * 10, WS_OP_BINARY, fin=False) + client_frame(b"p" * 100, WS_OP_PING)
            + client_frame(b"", WS_OP_CONT))
    assert p.feed(wire) == [(WS_OP_BINARY, b"a" * 10)]


def test_partial_large_frame_buffers_only_what_arrived():
    p = WebSocketParser()
    payload = os.urandom(1 << 20)
    wire = client_frame(payload)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert p.feed(wire[:14 + 1000]) == []
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # a header announcing 1 MiB plus 1000 bytes of payload must not reserve the megabyte
    assert peak < 16 * 1024
    assert feed_all(p, wire[14 + 1000:], [70000]) == [(WS_OP_BINARY, payload)]


# --------------------------------------------------------------------------------------------
# UTF-8


INVALID_UTF8 = [
    b"\xc0\xaf",                  # overlong '/'
    b"\xe0\x80\xaf",              # overlong, 3 bytes
    b"\xf0\x80\x80\xaf",          # overlong, 4 bytes
    b"\xc1\xbf",                  # overlong, 2 bytes
    b"\xed\xa0\x80",              # surrogate U+D800
    b"\xed\xbf\xbf",              # surrogate U+DFFF
    b"\xf4\x90\x80\x80",          # U+110000
    b"\xf5\x80\x80\x80",          # lead byte beyond U+10FFFF
    b"\xff",
    b"\x80",                      # lone continuation byte
    b"abc\xe2\x82",               # truncated sequence at the end
    b"\xe2\x82(",                 # truncated sequence followed by ASCII
    b"0123456789abcdef\xc3",      # truncated after the word-at-a-time ASCII path
    b"0123456789abcdef01234567\xa9",
]
VALID_UTF8 = ["", "plain ascii", "é", "€", "𝄞", "\ud7ff", "\ue000", "\U0010ffff", "mixed é€𝄞 text" * 5,
              "a" * 40 + "é" + "b" * 17]


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_text_message(data):
    assert not _utf8_valid(data)
    with pytest.raises(WebSocketError) as ei:
        WebSocketParser().feed(client_frame(data, WS_OP_TEXT))
    assert ei.value.code == 1007
    # also when spread over fragments and chunks
    frames = b"".join(client_frame(data[i:i + 1], WS_OP_TEXT if i == 0 else WS_OP_CONT,
                                   fin=i == len(data) - 1) for i in range(len(data)))
    with pytest.raises(WebSocketError) as ei:
        feed_all(WebSocketParser(), frames, [3])
    assert ei.value.code == 1007


@pytest.mark.parametrize("text", VALID_UTF8)
def test_valid_utf8_text_message(text):
    data = text.encode("utf-8")
    assert _utf8_valid(data)
    assert WebSocketParser().feed(client_frame(data, WS_OP_TEXT)) == [(WS_OP_TEXT, data)]


def test_invalid_utf8_in_binary_message_is_fine():
    assert WebSocketParser().feed(client_frame(b"\xff\xc0", WS_OP_BINARY)) == [(WS_OP_BINARY, b"\xff\xc0")]


def test_utf8_fails_fast_before_message_completes():
    p = WebSocketParser()
    with pytest.raises(WebSocketError) as ei:
        p.feed(client_frame(b"ok \xed\xa0\x80" + b"x" * 1000, WS_OP_TEXT)[:20])
    assert ei.value.code == 1007


@given(st.binary(max_size=64))
def test_utf8_validator_matches_python(data):
    try:
        data.decode("utf-8")
        expected = True
    except UnicodeDecodeError:
        expected = False
    assert _utf8_valid(data) == expected


@given(st.text(max_size=200), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_utf8_split_anywhere_in_fragments(text, cuts):
    data = text.encode("utf-8")
    pieces, i, k = [], 0, 0
    while i < len(data):
        pieces.append(data[i:i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1
    pieces = pieces or [b""]
    wire = b"".join(client_frame(piece, WS_OP_TEXT if j == 0 else WS_OP_CONT, fin=j == len(pieces) - 1)
                    for j, piece in enumerate(pieces))
    assert WebSocketParser().feed(wire) == [(WS_OP_TEXT, data)]


# --------------------------------------------------------------------------------------------
# unmasking


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.integers(0, 7))
def test_unmask_matches_naive_xor(data, mask, offset):
    assert ws_unmask(data, mask, offset) == naive_xor(data, mask, offset)


@settings(max_examples=30)
@given(st.integers(0, 70000), st.binary(min_size=4, max_size=4), st.integers(0, 3), st.integers(0, 7))
def test_unmask_large_and_unaligned(n, mask, offset, skip):
    data = os.urandom(n + skip)
    view = memoryview(data)[skip:]  # unaligned start
    assert ws_unmask(view, mask, offset) == naive_xor(bytes(view), mask, offset)


def test_unmask_is_an_involution_and_checks_mask():
    data = os.urandom(1000)
    assert ws_unmask(ws_unmask(data, b"abcd"), b"abcd") == data
    with pytest.raises(ValueError):
        ws_unmask(data, b"abc")


# --------------------------------------------------------------------------------------------
# random streams


message_st = st.one_of(
    st.tuples(st.just(WS_OP_BINARY), st.binary(max_size=700)),
    st.tuples(st.just(WS_OP_TEXT), st.text(max_size=200).map(lambda s: s.encode("utf-8"))),
)


@st.composite
def client_streams(draw):
    messages = draw(st.lists(message_st, max_size=12))
    wire = bytearray()
    pongs = bytearray()
    big = draw(st.booleans())
    for opcode, payload in messages:
        # random fragmentation of each message into frames
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        bounds = [0] + cuts + [len(payload)]
        parts = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
        for j, part in enumerate(parts):
            if draw(st.integers(0, 5)) == 0:  # an interleaved ping
                ping = draw(st.binary(max_size=125))
                wire += client_frame(ping, WS_OP_PING, mask=draw(st.binary(min_size=4, max_size=4)))
                pongs += b"\x8a" + bytes([len(ping)]) + ping
            form = draw(st.sampled_from([None, None, "16", "64"]))
            if form == "16" and len(part) > 65535:
                form = None
            wire += client_frame(part, opcode if j == 0 else WS_OP_CONT, fin=j == len(parts) - 1,
                                 mask=draw(st.binary(min_size=4, max_size=4)), form=form)
    if big:
        payload = os.urandom(draw(st.integers(126, 70000)))
        messages.append((WS_OP_BINARY, payload))
        wire += client_frame(payload, mask=draw(st.binary(min_size=4, max_size=4)))
    chunk_sizes = draw(st.lists(st.integers(1, 4000), min_size=1, max_size=8))
    return messages, bytes(wire), bytes(pongs), chunk_sizes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(client_streams())
def test_random_streams_any_chunking(stream):
    messages, wire, pongs, sizes = stream
    p = WebSocketParser()
    assert feed_all(p, wire, sizes) == messages
    assert p.take_output() == pongs
    # the whole stream at once gives the same result
    p2 = WebSocketParser()
    assert p2.feed(wire) == messages
    assert p2.take_output() == pongs


# --------------------------------------------------------------------------------------------
# encoder


def test_encode_close():
    assert encode_ws_close() == b"\x88\x02\x03\xe8"
    assert encode_ws_close(4001, "bye") == b"\x88\x05\x0f\xa1bye"
    assert encode_ws_close(None) == b"\x88\x00"
    for code in (1005, 1006, 1015, 999, 5000):
        with pytest.raises(ValueError):
            encode_ws_close(code)
    with pytest.raises(ValueError):
        encode_ws_close(1000, "x" * 124)
    assert len(encode_ws_close(1000, "x" * 123)) == 127


def test_encode_rejects_bad_frames():
    with pytest.raises(ValueError):
        encode_ws_frame(b"x", opcode=3)
    with pytest.raises(ValueError):
        encode_ws_frame(b"x" * 126, WS_OP_PING)
    with pytest.raises(ValueError):
        encode_ws_frame(b"x", WS_OP_PING, fin=False)
    assert encode_ws_frame(memoryview(b"abc"), WS_OP_BINARY) == b"\x82\x03abc"


def test_constants():
    assert (WS_OP_CONT, WS_OP_TEXT, WS_OP_BINARY, WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG) == (0, 1, 2, 8, 9, 10)


def _py_valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_utf8_validator_exhaustive_short_sequences():
    # every 2-byte sequence, and every lead/second byte pair of 3- and 4-byte forms
    for a in range(256):
        for b in range(256):
            pair = bytes([a, b])
            assert _utf8_valid(pair) == _py_valid(pair), pair
            if a >= 0xE0:
                for tail in (b"\x80", b"\xbf", b"\x80\x80", b"\xbf\xbf", b"\x7f", b"\xc0"):
                    seq = pair + tail
                    assert _utf8_valid(seq) == _py_valid(seq), seq


# -- the client side of the codec (what imgate.client uses)

RFC_MASK = bytes.fromhex("37fa213d")  # RFC 6455 5.7's example mask


def unmask_by_hand(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of a masked frame of < 126 payload bytes, undone byte by byte."""
    assert frame[1] & 0x80, "a client frame is masked"
    n, mask = frame[1] & 0x7F, frame[2:6]
    return frame[0], bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6 : 6 + n]))


def test_client_frames_are_masked_as_the_rfc_shows():
    # RFC 6455 5.7: a single-frame masked text message "Hello"
    assert encode_ws_frame(b"Hello", WS_OP_TEXT, True, RFC_MASK) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_ws_close(1000, mask=RFC_MASK) == bytes([0x88, 0x82]) + RFC_MASK + bytes([0x03 ^ 0x37, 0xE8 ^ 0xFA])
    assert encode_ws_close(None, mask=RFC_MASK) == bytes([0x88, 0x80]) + RFC_MASK
    big = encode_ws_frame(b"x" * 300, mask=RFC_MASK)
    assert big[:4] == bytes([0x82, 0xFE, 0x01, 0x2C]) and big[4:8] == RFC_MASK and len(big) == 8 + 300
    with pytest.raises(ValueError, match="mask must be 4 bytes"):
        encode_ws_frame(b"x", mask=b"abc")


def test_client_parser_reads_server_frames_and_refuses_masked_ones():
    p = WebSocketParser(client=True)
    assert p.client and not WebSocketParser().client
    # RFC 6455 5.7: a single-frame unmasked text message, then a fragmented one
    assert p.feed(bytes.fromhex("810548656c6c6f")) == [(WS_OP_TEXT, b"Hello")]
    assert p.feed(bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")) == [(WS_OP_TEXT, b"Hello")]
    with pytest.raises(WebSocketError, match="masked server frame"):
        WebSocketParser(client=True).feed(bytes.fromhex("818537fa213d7f9f4d5158"))


def test_client_parser_answers_with_masked_frames():
    p = WebSocketParser(client=True)
    assert p.feed(bytes.fromhex("890548656c6c6f")) == []  # RFC 6455 5.7: an unmasked ping
    assert unmask_by_hand(p.take_output()) == (0x8A, b"Hello")  # the pong, masked
    p.feed(bytes([0x88, 0x05, 0x03, 0xE9]) + b"bye")
    assert (p.closed, p.close_code, p.close_reason) == (True, 1001, "bye")
    assert unmask_by_hand(p.take_output()) == (0x88, b"\x03\xe9")  # the code, echoed, masked
    # and what it answers, a server's parser reads
    server = WebSocketParser()
    server.feed(encode_ws_frame(b"", 9, True, RFC_MASK))
    client = WebSocketParser(client=True)
    client.feed(server.take_output())
    assert client.last_pong == b"" and client.pongs_received == 1
