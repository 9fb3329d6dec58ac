"""The compressed blob format: the same bytes whichever zlib path wrote them."""

import random
import threading
import zlib

import pytest

from checkpointers import codec
from checkpointers.gil_deflate import Deflater


def zlib_module_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, codec.ZDICT_V1)
    return packer.compress(data) + packer.flush()


def test_libz_is_reachable_without_releasing_the_gil_on_this_platform():
    assert Deflater.available


@pytest.mark.parametrize("size", [0, 1, 47, 300, 4095, 4096, 20_000, codec._HOLD_GIL_UP_TO + 1])
def test_deflate_holding_the_gil_writes_exactly_what_the_zlib_module_writes(size):
    rng = random.Random(size)
    words = [b"messages", b"branch:to:model", b"\x00", b"content", rng.randbytes(3)]
    data = b"".join(rng.choice(words) for _ in range(size))[:size]
    assert Deflater(codec.ZDICT_V1)(data) == zlib_module_deflate(data)
    assert codec.deflate(data) == zlib_module_deflate(data)
    assert codec.inflate(codec.deflate(data)) == data


def test_threads_compressing_at_once_each_get_their_own_result():
    deflater = Deflater(codec.ZDICT_V1)
    blobs = [random.Random(n).randbytes(200) + codec.ZDICT_V1[n : n + 300] for n in range(64)]
    results: dict[int, bytes] = {}

    def work(offset: int) -> None:
        for n in range(offset, len(blobs), 4):
            for _ in range(50):
                results[n] = deflater(blobs[n])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(codec.inflate(results[n]) == blobs[n] for n in range(len(blobs)))


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
