"""The link's wire format (boards/link/protocol.py): CRC, framing, the frame decoder, payloads."""

import pytest

from boards.link import protocol as proto


def test_crc_matches_amaranth_catalog():
    from amaranth.lib.crc import catalog
    data = b"123456789"
    assert proto.crc16(data) == 0x29B1 == catalog.CRC16_IBM_3740(data_width=8).compute(data)


def test_frame_round_trip_and_residue():
    frame = proto.encode_frame(proto.SYNC_REQUEST, proto.INFER, 9, bytes(range(64)))
    assert proto.crc16(frame[1:]) == 0          # what the receiver checks
    dec = proto.FrameDecoder(proto.SYNC_REQUEST)
    assert dec.feed(b"\x00\x01" + frame[:10]) == []
    (f,) = dec.feed(frame[10:])
    assert (f.kind, f.seq, f.payload) == (proto.INFER, 9, bytes(range(64)))
    assert dec.skipped == 2 and dec.pending == 0


def test_decoder_drops_corrupt_frames_and_resyncs():
    good = proto.encode_frame(proto.SYNC_REPLY, proto.RESULT, 1, b"\x05" * 14)
    bad = bytearray(good)
    bad[7] ^= 0x01
    dec = proto.FrameDecoder(proto.SYNC_REPLY, max_length=18)
    frames = dec.feed(bytes(bad) + good)
    assert [fr.seq for fr in frames] == [1] and dec.bad_crc == 1
    # a lost length byte: that frame is gone (its length is out of range), the next decodes
    frames = dec.feed(good[:4] + good[5:] + good)
    assert len(frames) == 1


def test_result_and_info_payloads():
    payload = proto.result_payload([-128, -1, 0, 127], 123456)
    assert proto.parse_result(payload, 4) == ([-128, -1, 0, 127], 123456)
    info = proto.BoardInfo(784, 10, 8, 0xDEADBEEF, 60_000_000)
    assert proto.parse_info(proto.info_payload(info)) == info
    with pytest.raises(ValueError):
        proto.parse_result(payload, 5)


def test_decoder_on_a_random_noisy_stream():
    """3000 seeded random frames, a quarter with one bit flipped after the sync byte, garbage
    (without the sync byte) between them, fed in random chunks: exactly the intact frames come
    out, in order."""
    import numpy as np

    rng = np.random.default_rng(2024)
    stream, want = bytearray(), []
    for n in range(3000):
        payload = bytes(rng.integers(0, 256, int(rng.integers(0, 65)), dtype=np.uint8))
        kind, seq = int(rng.integers(256)), n % 256
        frame = bytearray(proto.encode_frame(proto.SYNC_REPLY, kind, seq, payload))
        if rng.random() < 0.25:
            frame[int(rng.integers(1, len(frame)))] ^= 1 << int(rng.integers(8))
        else:
            want.append((kind, seq, payload))
        garbage = rng.integers(0, 255, int(rng.integers(0, 6)), dtype=np.uint8)
        stream += bytes(frame) + bytes(np.where(garbage >= proto.SYNC_REPLY, garbage + 1,
                                                garbage).astype(np.uint8))
    dec = proto.FrameDecoder(proto.SYNC_REPLY, max_length=64)
    got, at = [], 0
    while at < len(stream):
        step = int(rng.integers(1, 200))
        got += [(f.kind, f.seq, f.payload) for f in dec.feed(bytes(stream[at:at + step]))]
        at += step
    assert got == want
