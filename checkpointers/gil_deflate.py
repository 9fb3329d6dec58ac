"""Raw deflate that keeps Python's GIL, for the small blobs a checkpoint write compresses.

CPython's `zlib` module releases the GIL around every call into libz. That is
right for large data, and costly for a checkpoint of a few hundred bytes saved
from a LangGraph worker thread: compressing takes about 5 µs, but the worker
must then wait to get the GIL back from the graph's own thread, which is busy
running the next step. Measured inside `graph.invoke` on this project's bench,
one such compression took 0.8 ms of wall time in the median.

`Deflater` calls the same libz through `ctypes.PyDLL`, which does not release
the GIL, with a stream made once and reset per blob. Its output is byte for byte
what `zlib.compressobj` gives with the same settings (a test checks this), so
the stored format does not depend on which path wrote it. Where libz cannot be
loaded this way, `Deflater.available` is False and callers use `zlib`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from ctypes import POINTER, byref, c_char_p, c_int, c_uint, c_ulong, c_void_p

_Z_OK, _Z_STREAM_END, _Z_FINISH, _Z_DEFLATED = 0, 1, 4, 8


class _ZStream(ctypes.Structure):
    """zlib's `z_stream` (zlib.h); its layout has not changed since zlib 1.0."""

    _fields_ = [
        ("next_in", c_char_p),
        ("avail_in", c_uint),
        ("total_in", c_ulong),
        ("next_out", c_void_p),
        ("avail_out", c_uint),
        ("total_out", c_ulong),
        ("msg", c_char_p),
        ("state", c_void_p),
        ("zalloc", c_void_p),
        ("zfree", c_void_p),
        ("opaque", c_void_p),
        ("data_type", c_int),
        ("adler", c_ulong),
        ("reserved", c_ulong),
    ]


def _load_libz() -> ctypes.PyDLL | None:
    for name in ("libz.so.1", ctypes.util.find_library("z")):
        if not name:
            continue
        try:
            lib = ctypes.PyDLL(name)
            lib.zlibVersion.restype = c_char_p
            stream = POINTER(_ZStream)
            lib.deflateInit2_.argtypes = [stream, c_int, c_int, c_int, c_int, c_int, c_char_p, c_int]
            lib.deflateReset.argtypes = [stream]
            lib.deflateSetDictionary.argtypes = [stream, c_char_p, c_uint]
            lib.deflateBound.argtypes = [stream, c_ulong]
            lib.deflateBound.restype = c_ulong
            lib.deflate.argtypes = [stream, c_int]
            lib.deflateEnd.argtypes = [stream]
            lib.zlibVersion()
            return lib
        except (OSError, AttributeError):
            continue
    return None


_LIBZ = _load_libz()


class _Stream:
    """One initialised deflate stream and its output buffer, reused blob after blob."""

    def __init__(self, level: int, wbits: int, mem_level: int) -> None:
        assert _LIBZ is not None
        self.z = _ZStream()
        self.ref = byref(self.z)
        rc = _LIBZ.deflateInit2_(
            self.ref, level, _Z_DEFLATED, wbits, mem_level, 0, _LIBZ.zlibVersion(), ctypes.sizeof(_ZStream)
        )
        if rc != _Z_OK:
            raise MemoryError(f"deflateInit2 failed ({rc})")
        self.out = ctypes.create_string_buffer(4096)

    def __del__(self) -> None:
        if _LIBZ is not None and getattr(self, "ref", None) is not None:
            _LIBZ.deflateEnd(self.ref)


class Deflater:
    """`Deflater(zdict)(data)` equals `compressobj(level, DEFLATED, wbits, mem_level, 0, zdict)`'s
    `compress(data) + flush()`, computed without releasing the GIL."""

    available = _LIBZ is not None

    def __init__(self, zdict: bytes, level: int = 6, wbits: int = -15, mem_level: int = 9) -> None:
        self.zdict = zdict
        self.settings = (level, wbits, mem_level)
        # Streams not in use. A thread takes one for one blob; two threads
        # compressing at once (the GIL can pass between Python lines) get two.
        self._idle: list[_Stream] = []
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> bytes:
        assert _LIBZ is not None
        with self._lock:
            stream = self._idle.pop() if self._idle else None
        if stream is None:
            stream = _Stream(*self.settings)
        try:
            z, ref = stream.z, stream.ref
            _LIBZ.deflateReset(ref)
            _LIBZ.deflateSetDictionary(ref, self.zdict, len(self.zdict))
            bound = _LIBZ.deflateBound(ref, len(data))
            if bound > len(stream.out):
                stream.out = ctypes.create_string_buffer(bound)
            out = ctypes.addressof(stream.out)
            z.next_in, z.avail_in = data, len(data)
            z.next_out, z.avail_out = out, len(stream.out)
            rc = _LIBZ.deflate(ref, _Z_FINISH)
            if rc != _Z_STREAM_END:
                raise RuntimeError(f"deflate did not finish ({rc})")
            packed = ctypes.string_at(out, z.total_out)
            z.next_in = None  # drop the reference to `data`
        except BaseException:
            stream = None  # a stream in an unknown state is not reused
            raise
        finally:
            if stream is not None:
                with self._lock:
                    self._idle.append(stream)
        return packed
