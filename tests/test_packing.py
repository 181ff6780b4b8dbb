"""Packing: known answers, a bit-stream oracle written with Python ints, round trips, errors."""
import numpy as np
import pytest
import torch

import quantlib
from quantlib import decode, encode, pack_nibbles, unpack_nibbles
from quantlib.packing import pack_6bit, unpack_6bit


def stream_oracle(codes, bits):
    """Little-endian bit stream of `bits`-bit codes, one row at a time, via Python ints."""
    rows = []
    for row in np.asarray(codes).reshape(-1, np.asarray(codes).shape[-1]):
        word = sum(int(c) << (bits * i) for i, c in enumerate(row))
        rows.append(list(word.to_bytes(len(row) * bits // 8, "little")))
    return np.array(rows, dtype=np.uint8).reshape(*np.asarray(codes).shape[:-1], -1)


def test_nibble_layout_known_answer():
    # element 2i in the low nibble (TransformerEngine, torchao, triton.tools.mxfp)
    assert pack_nibbles(np.array([0x1, 0x2, 0x3, 0x4], dtype=np.uint8)).tolist() == [0x21, 0x43]
    # E2M1: 1.0 is 0x2, -6.0 is 0xF -> one byte 0xF2
    codes = encode(torch.tensor([1.0, -6.0]), "e2m1")
    assert pack_nibbles(codes).tolist() == [0xF2]


@pytest.mark.parametrize("shape", [(8,), (3, 16), (2, 3, 6)])
def test_nibbles_match_stream_oracle_and_round_trip(shape):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, shape, dtype=np.uint8)
    packed = pack_nibbles(codes)
    assert packed.dtype == np.uint8 and packed.shape == (*shape[:-1], shape[-1] // 2)
    np.testing.assert_array_equal(packed, stream_oracle(codes, 4))
    np.testing.assert_array_equal(unpack_nibbles(packed), codes)
    t = torch.from_numpy(codes)
    assert torch.equal(unpack_nibbles(pack_nibbles(t)), t)


@pytest.mark.parametrize("shape", [(4,), (3, 16), (2, 2, 8)])
def test_6bit_matches_stream_oracle_and_round_trip(shape):
    codes = np.random.default_rng(1).integers(0, 64, shape, dtype=np.uint8)
    packed = pack_6bit(codes)
    assert packed.shape == (*shape[:-1], shape[-1] * 3 // 4)
    np.testing.assert_array_equal(packed, stream_oracle(codes, 6))
    np.testing.assert_array_equal(unpack_6bit(packed), codes)


def test_encode_pack_unpack_decode():
    x = torch.randn(4, 32) * 3
    for fmt in ("e2m1", "int4", "uint4"):
        c = encode(x.abs() if fmt == "uint4" else x, fmt)
        assert torch.equal(decode(unpack_nibbles(pack_nibbles(c)), fmt), decode(c, fmt))
    for fmt in ("e2m3", "e3m2"):
        c = encode(x, fmt)
        assert torch.equal(unpack_6bit(pack_6bit(c)), c)


def test_errors():
    with pytest.raises(ValueError, match="odd length 3.*pad"):
        pack_nibbles(np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="do not fit in 4 bits"):
        pack_nibbles(np.array([16, 0], dtype=np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        pack_nibbles(np.zeros(4, dtype=np.int32))
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_6bit(np.zeros(6, dtype=np.uint8))
    with pytest.raises(ValueError, match="do not fit in 6 bits"):
        pack_6bit(np.array([64, 0, 0, 0], dtype=np.uint8))
    with pytest.raises(ValueError, match="groups of 3"):
        unpack_6bit(np.zeros(4, dtype=np.uint8))


def test_public_names():
    assert quantlib.pack_nibbles is pack_nibbles and quantlib.unpack_nibbles is unpack_nibbles
