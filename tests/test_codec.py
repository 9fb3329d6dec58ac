"""The compressed blob format: raw deflate with the preset dictionary `ZDICT_V1`."""

import random
import zlib

import pytest

from checkpointers import codec


def zlib_module_inflate(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, codec.ZDICT_V1)
    return unpacker.decompress(data) + unpacker.flush()


@pytest.mark.parametrize("size", [0, 1, 47, 300, 4095, 4096, 20_000])
def test_deflate_writes_raw_deflate_with_the_preset_dictionary_and_inflate_reverses_it(size):
    rng = random.Random(size)
    words = [b"messages", b"branch:to:model", b"\x00", b"content", rng.randbytes(3)]
    data = b"".join(rng.choice(words) for _ in range(size))[:size]
    assert zlib_module_inflate(codec.deflate(data)) == data
    assert codec.inflate(codec.deflate(data)) == data


@pytest.mark.parametrize(
    "text",
    [
        "1F1E579D-660C-6B12-8010-9927C34D3B3D",
        "12345678-1234-1234-1234-12345678-abc",
        "12345678-1234-1234-1234-1234567 9abc",
        "12345678-1234-1234-1234-12345678 9ab",
        "x" * 36,
        "",
        "٠" * 8 + "-1234-1234-1234-123456789abc",
    ],
)
def test_an_id_that_is_not_a_lowercase_uuid_is_stored_as_it_is(text):
    assert codec.db_id(text) == text
    assert codec.py_id(codec.db_id(text)) == text


def test_a_lowercase_uuid_is_stored_as_its_sixteen_bytes():
    text = "1f1e579d-660c-6b12-8010-9927c34d3b3d"
    assert codec.db_id(text) == bytes.fromhex(text.replace("-", ""))
    assert codec.py_id(codec.db_id(text)) == text
