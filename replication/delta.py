"""rsync-style delta transfer: send only what the replica's copy of a file lacks.

The replica describes the copy it already has with a `Signature`: the file is cut into
blocks of `block_size` bytes (the last one may be shorter) and each block gets a weak
rolling checksum and a strong hash. The leader slides a window over the new version of
the file, finds offsets whose weak checksum is one of the replica's blocks, confirms
them with the strong hash, and sends an instruction stream made of `Copy` (runs of the
replica's own blocks) and `Literal` (bytes the replica cannot have). The replica
rebuilds the file with `apply_delta`; the caller checks the whole-file SHA-256 it got
from the leader, so a weak/strong collision or a replica file that changed under us is
caught there and answered with a full transfer.

The strong hash of a block is one of two `BLOCK_HASHES`, named by the signature: truncated
SHA-256 (protocols 1 and 2) or CRC-32 (protocol 3). Because of that whole-file check, a block
hash only has to make a false match rare, not impossible (rsync's reasoning too): CRC-32 runs at
~3.2 GB/s here against SHA-256's 1.4, and the two passes that hash every block (the replica's
signature, the leader's search) were most of a 256 MiB delta's time (issue 15).

Why it is fast without a C extension: the weak checksum at *every* offset of a window
comes from two cumulative sums (NumPy, no Python loop over bytes), membership in the
signature set is a table lookup on a hash of the checksum, and only the few surviving
offsets are hashed in Python. On top of that the search is lazy, as rsync's is: after
a match at block i the next block of the new file is first compared with block i + 1
directly (one SHA-256 of one block), so unchanged stretches cost one hash per block and
the rolling search only runs where the file actually changed or shifted. Memory stays
bounded: the new file is read in windows of `WINDOW_BYTES` and the rolling arrays
cover `ROLL_CHUNK` offsets at a time.

Wire formats (big-endian) are strict: a malformed signature or instruction stream
raises `ProtocolError` (a `ValueError`), never anything else, and nothing is allocated
beyond what the input's own length or the documented bounds allow.

    signature := "HSig" u8(version) u8(digest) u16(0) u32(block_size) u64(file_size)
                 u32[count](weak) digest[count](strong)     count = ceil(file_size / block_size)
                 version 1: strong = SHA-256 truncated to `digest` bytes (6..16)
                 version 2: strong = CRC-32 (zlib), digest = 4
    stream    := record* "E"
    record    := "C" u32(index) u32(count)        copy `count` blocks starting at block `index`
               | "L" u32(length) byte[length]     literal bytes, 1 <= length <= MAX_LITERAL
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import math
import os
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from replication.errors import ProtocolError


class _OnFirstUse:
    """A module imported when first used: NumPy costs ~0.3 s of a node's start (issue 15: start to
    healthy under 0.5 s), and only a delta (a big file the replica already has) needs it."""

    def __init__(self, name: str, environment: dict[str, str] | None = None) -> None:
        self._name = name
        self._environment = environment or {}
        """Defaults the module reads from the environment when imported (a variable set by the
        operator wins)."""
        self._module: ModuleType | None = None
        self._loading = False

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            for key, value in self._environment.items():
                os.environ.setdefault(key, value)
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def load_soon(self) -> None:
        """Import the module on a background thread now (once), so that its first use does not wait."""
        if self._module is None and not self._loading:
            self._loading = True
            threading.Thread(target=self.__getattr__, args=("__name__",), name="preload", daemon=True).start()


_NUMPY = _OnFirstUse("numpy", {"OPENBLAS_NUM_THREADS": "1"})
"""One OpenBLAS thread: the delta search calls no BLAS routine, and the pool NumPy starts at import
spins: `import numpy` took 0.17 s of CPU against 0.07 s with one thread here (perf of a 1 GiB seed
showed blas_thread_server in the leader). No change in a seed's wall time could be measured."""

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    U32Array = npt.NDArray[np.uint32]
else:
    np = _NUMPY

__all__ = [
    "BLOCK_HASHES",
    "COPY_RUN_BYTES",
    "CRC_DIGEST_BYTES",
    "DELTA_MIN_SIZE",
    "DIGEST_BYTES",
    "DIGEST_WIDTHS",
    "FAILED_MATCH_LIMIT",
    "MAX_BLOCKS",
    "MAX_BLOCK_SIZE",
    "MAX_LITERAL",
    "MIN_BLOCK_SIZE",
    "SHORT_DIGEST_BYTES",
    "Copy",
    "Instruction",
    "Literal",
    "Signature",
    "apply_delta",
    "block_digester",
    "block_size_for",
    "compute_delta",
    "decode_instructions",
    "encode_instructions",
    "preload",
    "signature_of_fd",
    "signature_of_path",
    "strong_digest",
    "weak_checksum",
]

DELTA_MIN_SIZE = 1024 * 1024
"""Smaller files travel whole (the sender's default threshold): below ~1 MiB a LAN sends them faster
than a signature round trip."""
MIN_BLOCK_SIZE = 1024
"""Smallest block a signature may use (block_size_for stays >= 2 KiB - 1: below that the 20 bytes of
signature per block cost more than they save)."""
MAX_BLOCK_SIZE = 128 * 1024
"""Largest block (rsync's limit too): a 1-byte change never costs more than this in literals."""
FAILED_MATCH_LIMIT = 32
"""Strong-hash mismatches one weak sum may cause before its candidates are rate-limited (compute_delta)."""
MAX_BLOCKS = 1 << 24
"""Blocks in one signature (320 MiB of signature, 2 TiB of file at MAX_BLOCK_SIZE); larger files go whole."""
DIGEST_BYTES = 16
"""Strong hash width: SHA-256 truncated to 128 bits, far beyond the whole-file check's needs."""
SHORT_DIGEST_BYTES = 6
"""The width a sender of protocol 2 asks for: 48 bits (rsync sends about 3 bytes per block for
such files) keep a false block match rare (and the whole-file SHA-256 catches one anyway, costing a
whole transfer), and the signature of a 256 MiB file shrinks from 328 KB to 164 KB, which with its
base64 in the JSON answer keeps a 1-byte change within 1.5x of rsync's wire bytes (issue 15)."""
DIGEST_WIDTHS = range(SHORT_DIGEST_BYTES, DIGEST_BYTES + 1)
"""Widths a SHA-256 signature may use."""
CRC_DIGEST_BYTES = 4
"""The width of a CRC-32 signature's strong digests."""
BLOCK_HASHES = ("sha256", "crc32")
"""The strong block hashes a signature may use: its wire version is 1 + the index here."""
MAX_LITERAL = 1 << 20
"""Longest literal record; longer runs are split so a decoder never buffers more than this."""
WINDOW_BYTES = 8 << 20
"""How much of the new file compute_delta reads at a time (plus less than one block carried over)."""
ROLL_CHUNK = 256 << 10
"""Offsets per rolling-checksum pass: the uint32 scratch arrays (~4 x 1.5 MiB) stay in cache."""
COPY_RUN_BYTES = 4 << 20
"""Longest Copy record compute_delta emits (in bytes of the old file): longer runs of matching
blocks go as several records, so the replica rebuilds while the leader still searches."""

_SIG_MAGIC = b"HSig"
_SIG_HEADER = struct.Struct(">4sBBHIQ")
_COPY = struct.Struct(">II")
_LEN = struct.Struct(">I")
_TAG_COPY = 0x43  # "C"
_TAG_LITERAL = 0x4C  # "L"
_TAG_END = 0x45  # "E"
_TAG_LITERAL_BODY = -1  # parser state: the bytes of a literal whose length was read
_U32_MAX = 0xFFFFFFFF
_READ_CHUNK = 8 << 20
_SIGNATURE_CHUNK = 2 << 20
"""What signature_of_fd reads at a time, as two buffers used in turn: its weak sums and CRC-32s then
run over data still in the CPU's cache (a 256 MiB signature: 129-130 ms here against 145-154 ms
with 8 MiB, best of 4; 1 MiB was slower again, 179 ms)."""
_ENCODE_BATCH = 64 << 10
# Two odd multipliers for the membership tables: their products' top bits are independent enough
# that a false positive in the first table rarely survives the second.
_MUL1 = 0x9E3779B1
_MUL2 = 0x85EBCA77
ReadExactly = Callable[[int], bytes]


def preload() -> None:
    """Import NumPy in the background now: a node that is about to need a delta calls this so the
    ~0.3 s import (0.2-0.35 s measured, 2 cores) is not spent on the delta's critical path. The
    leader calls it when it asks for signatures (it waits for the replica's answer anyway); the
    replica when its manifest shows a file big enough for deltas (NumPy then costs it ~15 MiB)."""
    _NUMPY.load_soon()


def block_size_for(size: int) -> int:
    """Block size for a file of `size` bytes: about sqrt(size), clamped to [2 KiB, 128 KiB], minus one.

    sqrt balances the two costs of a delta: the signature grows as size / block and the
    literal sent for a small change grows as block, so their sum is smallest near
    sqrt(size) (rsync's rule). Both sides agree because the size travels in the signature.

    The size is odd on purpose. A run of n equal bytes v has a = n * v mod 2**16, so with n a
    multiple of 2**k every v that is a multiple of 2**(16 - k) has the all-zero block's a, and
    often its b too: at 16 KiB a run of spaces has exactly the weak sum of a run of zeros, at
    128 KiB a run of any byte does, and every offset inside such a run would cost a strong
    hash of a whole block. With n odd, runs of different bytes never share a weak sum.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    rounded = (math.isqrt(size) + 4) // 8 * 8
    return min(max(rounded, 2 * 1024), MAX_BLOCK_SIZE) - 1


def strong_digest(block: bytes | bytearray | memoryview, width: int = DIGEST_BYTES) -> bytes:
    """Strong hash of one block: truncated SHA-256, which runs at >1 GB/s with the SHA extensions
    that current x86 and ARM CPUs have (BLAKE2b is about half that here)."""
    return hashlib.sha256(block).digest()[:width]


def _crc_digest(block: bytes | bytearray | memoryview) -> bytes:
    return zlib.crc32(block).to_bytes(CRC_DIGEST_BYTES, "big")


def block_digester(block_hash: str, width: int) -> Callable[[bytes | bytearray | memoryview], bytes]:
    """The strong hash of one block for a signature of `block_hash` and digest `width`.

    CRC-32 detects every change confined to 32 consecutive bits of a block (a burst), so the usual
    small edit is never a false match; anything else slips through with odds of 2**-32, and the
    whole-file SHA-256 then catches it (that file goes whole)."""
    if block_hash == "crc32" and width == CRC_DIGEST_BYTES:
        return _crc_digest
    if block_hash == "sha256" and width in DIGEST_WIDTHS:
        return lambda block: strong_digest(block, width)
    raise ValueError(f"no block hash {block_hash!r} of {width} bytes")


def _width_ok(block_hash: str, width: int) -> bool:
    if block_hash == "crc32":
        return width == CRC_DIGEST_BYTES
    return block_hash == "sha256" and width in DIGEST_WIDTHS


def weak_checksum(block: bytes | bytearray | memoryview) -> int:
    """rsync's weak checksum of one block: a = sum(x) and b = sum((len - j) * x[j]), both mod 2**16,
    packed as a | b << 16. The reference definition; the search computes it for every offset at once."""
    x = np.frombuffer(block, dtype=np.uint8)
    weights = np.arange(x.size, 0, -1, dtype=np.uint64)
    a = int(x.sum(dtype=np.uint64)) & 0xFFFF
    b = int((x * weights).sum(dtype=np.uint64)) & 0xFFFF
    return a | b << 16


def _block_count(file_size: int, block_size: int) -> int:
    return -(-file_size // block_size)


@dataclass(frozen=True, eq=False)
class Signature:
    """What the replica's copy of a file looks like, block by block.

    `weak[i]` and `strong[i * width:(i + 1) * width]` (width = `digest_bytes`) describe block i, i.e. the
    bytes [i * block_size, min((i + 1) * block_size, file_size)); only the last block may be
    short. The digests are one bytes blob so a signature of a million blocks is two objects,
    not a million.
    """

    block_size: int
    file_size: int
    weak: U32Array
    strong: bytes
    digest_bytes: int = DIGEST_BYTES
    block_hash: str = "sha256"
    """One of BLOCK_HASHES."""

    def __post_init__(self) -> None:
        if not MIN_BLOCK_SIZE <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block size {self.block_size} outside [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
        if self.file_size < 0:
            raise ValueError("file size must be >= 0")
        count = _block_count(self.file_size, self.block_size)
        if count > MAX_BLOCKS:
            raise ValueError(f"{count} blocks exceed the limit of {MAX_BLOCKS}")
        weak_ok = isinstance(self.weak, np.ndarray) and self.weak.dtype == np.uint32
        if not weak_ok or self.weak.shape != (count,):
            raise ValueError(f"weak sums must be an array of {count} uint32 values")
        if not _width_ok(self.block_hash, self.digest_bytes):
            raise ValueError(f"no block hash {self.block_hash!r} of {self.digest_bytes} bytes")
        if not isinstance(self.strong, bytes) or len(self.strong) != count * self.digest_bytes:
            raise ValueError(f"strong digests must be {count * self.digest_bytes} bytes")
        # Frozen means frozen: nobody may edit the sums a search index was built from.
        if self.weak.flags.writeable:
            weak = self.weak.copy()
            weak.flags.writeable = False
            object.__setattr__(self, "weak", weak)

    @property
    def block_count(self) -> int:
        return _block_count(self.file_size, self.block_size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (
            self.block_size == other.block_size
            and self.file_size == other.file_size
            and bool(np.array_equal(self.weak, other.weak))
            and self.strong == other.strong
            and self.block_hash == other.block_hash
        )

    __hash__ = None  # type: ignore[assignment]

    def digest(self, index: int) -> bytes:
        """Strong hash of block `index`."""
        return self.strong[index * self.digest_bytes : (index + 1) * self.digest_bytes]

    def to_bytes(self) -> bytes:
        """Compact wire form: 20 bytes of header, then 20 bytes per block."""
        header = _SIG_HEADER.pack(
            _SIG_MAGIC,
            1 + BLOCK_HASHES.index(self.block_hash),
            self.digest_bytes,
            0,
            self.block_size,
            self.file_size,
        )
        return header + self.weak.astype(">u4").tobytes() + self.strong

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> Signature:
        """Parse `to_bytes` output; anything else raises ProtocolError.

        The header is checked before anything is allocated, and the block count it implies
        must match the blob's actual length, so a hostile header cannot make us allocate more
        than the blob it came in.
        """
        view = memoryview(blob).cast("B")
        if len(view) < _SIG_HEADER.size:
            raise ProtocolError("signature shorter than its header")
        magic, version, digest_bytes, pad, block_size, file_size = _SIG_HEADER.unpack_from(view)
        if magic != _SIG_MAGIC:
            raise ProtocolError("not a block signature")
        block_hash = BLOCK_HASHES[version - 1] if 1 <= version <= len(BLOCK_HASHES) else ""
        if not _width_ok(block_hash, digest_bytes) or pad != 0:
            raise ProtocolError(f"unsupported signature version {version}/{digest_bytes}/{pad}")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ProtocolError(f"signature block size {block_size} out of range")
        count = _block_count(file_size, block_size)
        if count > MAX_BLOCKS:
            raise ProtocolError(f"signature of {count} blocks exceeds {MAX_BLOCKS}")
        if len(view) != _SIG_HEADER.size + count * (4 + digest_bytes):
            raise ProtocolError(f"signature of {count} blocks has the wrong length {len(view)}")
        weak_end = _SIG_HEADER.size + 4 * count
        weak = np.frombuffer(view, dtype=">u4", count=count, offset=_SIG_HEADER.size).astype(np.uint32)
        return cls(block_size, file_size, weak, bytes(view[weak_end:]), digest_bytes, block_hash)


def _weak_of_blocks(blocks: npt.NDArray[np.uint8], weights: npt.NDArray[np.uint16]) -> U32Array:
    """Weak checksums of the rows of a (k, n) block matrix; `weights` is n, n-1, ..., 1 mod 2**16.

    Both sums are only kept mod 2**16, so uint16 arithmetic that wraps is exact, and it moves half
    the bytes that uint32 did: 2.5x faster, the difference between the signature's weak sums
    costing as much as its strong hashes and costing half of them."""
    a: U32Array = blocks.sum(axis=1, dtype=np.uint16).astype(np.uint32)
    b: U32Array = (blocks * weights).sum(axis=1, dtype=np.uint16).astype(np.uint32)
    np.left_shift(b, np.uint32(16), out=b)
    np.bitwise_or(a, b, out=a)
    return a


def _pread_full(fd: int, buf: memoryview, offset: int) -> int:
    """Fill `buf` from `offset`; fewer bytes only at end of file."""
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def signature_of_fd(
    fd: int, block_size: int | None = None, digest_bytes: int = DIGEST_BYTES, block_hash: str = "sha256"
) -> Signature:
    """Signature of the regular file open on `fd`, read from offset 0 with pread (the fd's
    own offset is neither used nor moved, so the caller may share it).

    The block size defaults to `block_size_for` of the size fstat reports; if the file grows
    while we read, the signature simply covers what was read. Reads go in chunks of a few
    MiB into two buffers used in turn, so memory does not grow with the file.

    The strong hashes of a chunk are computed on a worker thread while this one computes its
    weak sums and reads the next chunk: hashlib and NumPy both release the GIL, so on two cores
    the signature of a 256 MiB file costs about its hashing alone (issue 15: delta time).
    """
    size = os.fstat(fd).st_size
    n = block_size_for(size) if block_size is None else block_size
    digester = block_digester(block_hash, digest_bytes)
    if not MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE:
        raise ValueError(f"block size {n} outside [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
    per_chunk = max(1, _SIGNATURE_CHUNK // 2 // n)
    buffers = [bytearray(per_chunk * n) for _ in range(2)]
    weights = np.arange(n, 0, -1, dtype=np.uint32).astype(np.uint16)
    weak_parts: list[U32Array] = []
    strong_parts: list[Future[bytes]] = []
    offset = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="signature") as hasher:
        for turn in itertools.count():
            buf = buffers[turn % 2]
            if turn >= 2:
                strong_parts[-2].result()  # its hashing used this buffer: wait before reading over it
            view = memoryview(buf)
            got = _pread_full(fd, view, offset)
            offset += got
            if (offset + n - 1) // n > MAX_BLOCKS:
                raise ValueError(f"file too large for a signature of at most {MAX_BLOCKS} blocks")
            strong_parts.append(hasher.submit(_strong_digests, view[:got], n, digester))
            full = got // n
            if full:
                arr = np.frombuffer(buf, dtype=np.uint8, count=full * n)
                weak_parts.append(_weak_of_blocks(arr.reshape(full, n), weights))
            if got > full * n:
                weak_parts.append(np.array([weak_checksum(view[full * n : got])], dtype=np.uint32))
            if got < len(buf):
                break
        strong = b"".join(part.result() for part in strong_parts)
    weak = np.concatenate(weak_parts) if weak_parts else np.zeros(0, dtype=np.uint32)
    return Signature(n, offset, weak, strong, digest_bytes, block_hash)


def _strong_digests(data: memoryview, n: int, digester: Callable[[memoryview], bytes]) -> bytes:
    """The strong digests of `data` cut into blocks of n bytes (the last one may be shorter)."""
    return b"".join(digester(data[start : start + n]) for start in range(0, len(data), n))


def signature_of_path(path: str | os.PathLike[str], block_size: int | None = None) -> Signature:
    """`signature_of_fd` of the file at `path` (a symlink there is not followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return signature_of_fd(fd, block_size)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy `count` consecutive blocks of the old file, starting at block `index`.

    Runs rather than single blocks: an unchanged 256 MiB file is one 9-byte record."""

    index: int
    count: int


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes the old file does not have."""

    data: bytes


Instruction = Copy | Literal


class _Emitter:
    """Turns matches and literal stretches into instructions: merges consecutive blocks into
    one Copy run and splits literals at MAX_LITERAL. Instructions wait in `out` for the
    generator to hand them on, so the search code needs no nested generators.

    A run is handed on once it has `max_run` blocks, even if the next block continues it: the
    replica can rebuild the first part of an unchanged stretch while we still search the rest
    (an unchanged 256 MiB file is then 64 records, not one)."""

    def __init__(self, max_run: int) -> None:
        self.out: list[Instruction] = []
        self._max_run = max_run
        self._run_index = -1
        self._run_count = 0

    def copy(self, index: int) -> None:
        if self._run_count and index == self._run_index + self._run_count:
            self._run_count += 1
            if self._run_count >= self._max_run:
                self.flush_copy()
            return
        self.flush_copy()
        self._run_index, self._run_count = index, 1

    def copy_run(self, index: int, count: int) -> None:
        """`count` consecutive blocks from `index`: exactly what `copy` of each emits, in one call."""
        if count and not (self._run_count and index == self._run_index + self._run_count):
            self.flush_copy()
        while count:
            if not self._run_count:  # a new run: `copy` checks the length only when one grows
                self._run_index, self._run_count = index, 1
                index, count = index + 1, count - 1
                continue
            grown = min(max(self._max_run - self._run_count, 1), count)
            self._run_count += grown
            index, count = index + grown, count - grown
            if self._run_count >= self._max_run:
                self.flush_copy()

    def literal(self, data: memoryview) -> None:
        if not len(data):
            return
        self.flush_copy()
        for start in range(0, len(data), MAX_LITERAL):
            self.out.append(Literal(bytes(data[start : start + MAX_LITERAL])))

    def flush_copy(self) -> None:
        if self._run_count:
            self.out.append(Copy(self._run_index, self._run_count))
            self._run_count = 0


class _BlockIndex:
    """The signature's full blocks, arranged for the rolling search.

    Membership of a weak sum is decided in three vectorised steps, cheapest first: a bit in
    a table indexed by one multiplicative hash of the sum, then in a second table with
    another multiplier, then an exact binary search in the sorted sums. Each table has ~16
    slots per block, so each lets through ~1/16 of the non-members; the tables stay <= 1 MiB
    so the per-offset lookup hits the CPU cache.
    """

    def __init__(self, sig: Signature) -> None:
        self.n = sig.block_size
        self.full = sig.file_size // sig.block_size
        weak = sig.weak[: self.full]
        self.order = np.argsort(weak, kind="stable")
        self.sorted = weak[self.order]
        bits = min(max(self.full.bit_length() + 4, 10), 20)
        self.shift = np.uint32(32 - bits)
        self.table1 = np.zeros(1 << bits, dtype=np.bool_)
        self.table1[(weak * np.uint32(_MUL1)) >> self.shift] = True
        self.table2 = np.zeros(1 << bits, dtype=np.bool_)
        self.table2[(weak * np.uint32(_MUL2)) >> self.shift] = True
        span = ROLL_CHUNK + self.n
        self._sums = np.zeros(span + 1, dtype=np.uint32)
        self._sums2 = np.zeros(span + 2, dtype=np.uint32)
        self._w = np.empty(ROLL_CHUNK, dtype=np.uint32)
        self._t = np.empty(ROLL_CHUNK, dtype=np.uint32)
        self._hit = np.empty(ROLL_CHUNK, dtype=np.bool_)

    def rolling_weak(self, x: npt.NDArray[np.uint8]) -> U32Array:
        """Weak checksum of x[k:k + n] for every k in [0, len(x) - n], via prefix sums.

        With S[i] = x[0] + ... + x[i-1] and U[i+1] = S[0] + ... + S[i]:
            a(k) = S[k+n] - S[k]
            b(k) = sum_{j=k}^{k+n-1} (k+n-j) x[j] = sum_{i=k+1}^{k+n} (S[i] - S[k])
                 = U[k+n+1] - U[k+1] - n S[k]
        Two cumulative sums and a handful of element-wise passes, all uint32 wrapping
        arithmetic, which is exact mod 2**16. The result lives in scratch memory that the
        next call overwrites.
        """
        n = self.n
        length = x.size
        m = length - n + 1
        s = self._sums[: length + 1]
        np.cumsum(x, dtype=np.uint32, out=s[1:])
        u = self._sums2[: length + 2]
        np.cumsum(s, dtype=np.uint32, out=u[1:])
        w = self._w[:m]
        t = self._t[:m]
        np.subtract(u[n + 1 : n + 1 + m], u[1 : 1 + m], out=w)
        np.multiply(s[:m], np.uint32(n), out=t)
        np.subtract(w, t, out=w)
        np.left_shift(w, np.uint32(16), out=w)
        np.subtract(s[n : n + m], s[:m], out=t)
        np.bitwise_and(t, np.uint32(0xFFFF), out=t)
        np.bitwise_or(w, t, out=w)
        return w

    def candidates(self, x: npt.NDArray[np.uint8]) -> tuple[list[int], list[int], list[int]]:
        """Offsets k in x whose weak sum belongs to a block, with the range [lo, hi) of
        `order` holding the blocks that have that sum."""
        if self.full == 0:
            return [], [], []
        w = self.rolling_weak(x)
        m = w.size
        t = self._t[:m]
        np.multiply(w, np.uint32(_MUL1), out=t)
        np.right_shift(t, self.shift, out=t)
        hits = np.flatnonzero(np.take(self.table1, t, out=self._hit[:m]))
        if hits.size:
            hw = w[hits]
            hits = hits[self.table2[(hw * np.uint32(_MUL2)) >> self.shift]]
        if not hits.size:
            return [], [], []
        hw = w[hits]
        lo = np.searchsorted(self.sorted, hw, side="left")
        hi = np.searchsorted(self.sorted, hw, side="right")
        keep = lo < hi
        return hits[keep].tolist(), lo[keep].tolist(), hi[keep].tolist()


class _Window:
    """The stretch [base, end) of the new file held in memory, read on with pread in windows of
    WINDOW_BYTES: memory stays bounded whatever the file's size.

    `tee` runs on a worker thread over each window just read while the search runs over it (the
    whole-file SHA-256 then costs no time on two cores: hashlib releases the GIL); it is waited for
    before the buffer is overwritten, so it sees every byte once, in order."""

    def __init__(self, fd: int, block_size: int, tee: Callable[[memoryview], object] | None) -> None:
        self.fd = fd
        self.tee = tee
        self.buf = bytearray(WINDOW_BYTES + block_size)
        self.view = memoryview(self.buf)
        self.arr = np.frombuffer(self.buf, dtype=np.uint8)
        self.base = 0  # file offset of buf[0]
        self.end = 0  # file offset just past the data in buf
        self.eof = False
        self._teeing: Future[object] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-tee") if tee else None

    def read_on(self, keep_from: int) -> None:
        """Keep [keep_from, end) (less than a block, not searched yet), drop what is before it, and
        read the next window after it; `tee` sees the new bytes."""
        self.finish_tee()
        keep = self.end - keep_from
        self.buf[:keep] = self.buf[keep_from - self.base : self.end - self.base]
        self.base = keep_from
        got = _pread_full(self.fd, self.view[keep : keep + WINDOW_BYTES], self.end)
        if self.tee is not None and self._worker is not None and got:
            self._teeing = self._worker.submit(self.tee, self.view[keep : keep + got])
        self.end += got
        self.eof = got < WINDOW_BYTES

    def finish_tee(self) -> None:
        """Wait until `tee` has seen every byte read so far (its exception, if any, is raised here)."""
        teeing, self._teeing = self._teeing, None
        if teeing is not None:
            teeing.result()

    def close(self) -> None:
        """Wait for `tee` and stop its thread (safe to call twice)."""
        try:
            self.finish_tee()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)

    def span(self, start: int, stop: int) -> memoryview:
        """The file's bytes [start, stop), which must be in the window."""
        return self.view[start - self.base : stop - self.base]


Match = tuple[int, int, int]
"""(block index, offset in the new file, length) of a block found in the new file."""


class _Search:
    """Where the old file's blocks sit in the new one, over a _Window.

    First the block after the previous match, at the search position (unchanged or shifted data
    cost one strong hash per block); else the rolling search's candidates over [lo, hi), computed
    ROLL_CHUNK offsets at a time and tried in order, with the weak sums that kept failing
    throttled (compute_delta says why)."""

    def __init__(self, sig: Signature, window: _Window) -> None:
        self.index = _BlockIndex(sig)
        self.window = window
        self.n = sig.block_size
        self.full = self.index.full
        self.count = sig.block_count
        self.tail_len = sig.file_size - self.full * self.n
        self.strong = sig.strong
        self.width = sig.digest_bytes
        self._hash = block_digester(sig.block_hash, sig.digest_bytes)
        self.lo = self.hi = 0  # the rolling search has covered offsets [lo, hi)
        self._offsets: list[int] = []
        self._lows: list[int] = []
        self._highs: list[int] = []
        self._next = 0
        self._failures: dict[int, int] = {}  # strong-hash mismatches per weak sum (its first slot in order)
        self._throttled: dict[int, int] = {}  # weak sum -> next offset worth a strong hash again

    def next_match(self, p: int, last: int) -> Match | None:
        """The earliest block at an offset >= p, before `hi`; None: none before `hi`."""
        in_cache = self.lo <= p < self.hi
        if not in_cache or last + 1 == self.full:
            length = self.expected_at(p, last + 1)
            if length:
                return last + 1, p, length
        if not in_cache:
            self._scan(p)
        return self._from_candidates(p, last + 1)

    def run_at(self, p: int, expected: int) -> int:
        """How many full blocks from `expected` on sit one after the other from p, within the window.

        What `next_match` finds block by block in an unchanged stretch (p outside the rolling
        search's range), in one tight loop: one strong hash per block and no call per block
        beyond it. That loop was most of the leader's Python time in a 1-byte delta."""
        if self.lo <= p < self.hi:
            return 0  # next_match would try the rolling search's candidates first
        window, n, width = self.window, self.n, self.width
        limit = min(self.full - expected, (window.end - p) // n)
        view, strong, digest = window.view, self.strong, self._hash
        at = p - window.base
        first = expected * width
        count = 0
        while count < limit:
            if digest(view[at : at + n]) != strong[first : first + width]:
                break
            count += 1
            at += n
            first += width
        return count

    def tail_match(self, p: int, last: int) -> Match | None:
        """With less than a block left: the old file's short last block, right after the block before
        it (an append) or at the very end of the new file."""
        if not self.tail_len:
            return None
        length = self.expected_at(p, last + 1)
        if length:
            return last + 1, p, length
        q = self.window.end - self.tail_len
        if q >= p and self._digest(q, self.tail_len) == self._block_digest(self.count - 1):
            return self.count - 1, q, self.tail_len
        return None

    def expected_at(self, q: int, expected: int) -> int:
        """The length of block `expected` if it sits at q, else 0."""
        length = self.n if expected < self.full else self.tail_len if expected < self.count else 0
        if not length or q + length > self.window.end:
            return 0
        return length if self._digest(q, length) == self._block_digest(expected) else 0

    def _digest(self, q: int, length: int) -> bytes:
        return self._hash(self.window.span(q, q + length))

    def _block_digest(self, i: int) -> bytes:
        return self.strong[i * self.width : (i + 1) * self.width]

    def _scan(self, p: int) -> None:
        """The rolling search over the next ROLL_CHUNK offsets from p (vectorised: _BlockIndex)."""
        window = self.window
        self.lo = p
        self.hi = min(p + ROLL_CHUNK, window.end - self.n + 1)
        arr = window.arr[self.lo - window.base : self.hi - window.base + self.n - 1]
        offsets, self._lows, self._highs = self.index.candidates(arr)
        self._offsets = [self.lo + k for k in offsets]
        self._next = 0

    def _from_candidates(self, p: int, expected: int) -> Match | None:
        """The first candidate at or after p whose strong hash is a block's: the expected block's
        first, else any block with that weak sum."""
        offsets, lows, highs = self._offsets, self._lows, self._highs
        failures, throttled, order, n = self._failures, self._throttled, self.index.order, self.n
        ci = self._next
        while ci < len(offsets) and offsets[ci] < p:
            ci += 1
        try:
            while ci < len(offsets):
                q = offsets[ci]
                key = lows[ci]  # identifies the weak sum
                ci += 1
                if q < throttled.get(key, 0):
                    continue
                digest = self._digest(q, n)
                if expected < self.full and digest == self._block_digest(expected):
                    return expected, q, n
                for i in order[key : highs[ci - 1]].tolist():
                    if digest == self._block_digest(i):
                        return i, q, n
                failures[key] = failures.get(key, 0) + 1
                if failures[key] >= FAILED_MATCH_LIMIT:
                    throttled[key] = q + n
            return None
        finally:
            self._next = ci


def compute_delta(
    sig: Signature, fd: int, *, tee: Callable[[memoryview], object] | None = None
) -> Iterator[Instruction]:
    """Instructions that turn the file `sig` describes into the regular file open on `fd`.

    The new file is read with pread from offset 0 in windows of WINDOW_BYTES, so memory is
    bounded whatever its size. The search is greedy: at position p the earliest offset
    q >= p whose block matches wins, [p, q) becomes literal and the search resumes at
    q + block_size. A match is tried first at p against the block after the previous match
    (so unchanged and merely shifted data cost one strong hash per block) and otherwise
    found by the vectorised rolling search over the next ROLL_CHUNK offsets. The old
    file's short last block is matched where it can still fit: right after the block before
    it (an append) or at the very end of the new file.

    Work stays linear even on data built to defeat the weak sum: once a weak sum has led to
    FAILED_MATCH_LIMIT strong-hash mismatches, its candidates are hashed at most once per
    block length. A run of colliding offsets then costs one hash per block instead of one per
    byte; the price, only in that situation, is that a real match of a block with that weak
    sum may be skipped (it goes as literal instead: more bytes, never a wrong file).

    `tee`, if given, sees every byte of the new file exactly once, in order (a memoryview
    valid only during the call): feed it to a SHA-256 so the whole-file hash the caller
    sends describes exactly the bytes this delta encodes, even if the file is being written.
    """
    n = sig.block_size
    window = _Window(fd, n, tee)
    try:
        yield from _delta_over(sig, window)
    finally:
        window.close()


def _delta_over(sig: Signature, window: _Window) -> Iterator[Instruction]:
    """compute_delta's search over the new file as `window` reads it; `tee` has seen every byte
    before the last instruction is handed on."""
    n = sig.block_size
    search = _Search(sig, window)
    emit = _Emitter(
        -(-COPY_RUN_BYTES // n)
    )  # runs of at least COPY_RUN_BYTES: encode_instructions sends each
    p = 0  # search position
    lit = 0  # start of the pending literal stretch
    last = -1  # block index of the previous match
    while True:
        if p + n > window.end and not window.eof:  # flush the literal stretch, read on
            emit.literal(window.span(lit, p))
            window.read_on(p)
            lit = p
        elif p + n > window.end:
            break  # end of file with less than a block left
        elif p == lit and (run := search.run_at(p, last + 1)):
            emit.copy_run(last + 1, run)
            last += run
            p = lit = p + run * n
        elif (match := search.next_match(p, last)) is None:
            p = search.hi
        else:
            p = lit = _emit_match(emit, window, lit, match)
            last = match[0]
        if emit.out:
            yield from emit.out
            emit.out.clear()
    if (match := search.tail_match(p, last)) is not None:
        lit = _emit_match(emit, window, lit, match)
    emit.literal(window.span(lit, window.end))
    emit.flush_copy()
    window.finish_tee()
    yield from emit.out


def _emit_match(emit: _Emitter, window: _Window, lit: int, match: Match) -> int:
    """The literal stretch before the match, then the matched block; where the next stretch starts."""
    index, q, length = match
    emit.literal(window.span(lit, q))
    emit.copy(index)
    return q + length


def encode_instructions(instructions: Iterable[Instruction], block_size: int = 0) -> Iterator[bytes]:
    """The wire form of `instructions`, ending with the end record.

    Small records are batched into chunks of ~64 KiB; big literals are passed on as they
    are (after their header), so nothing is copied twice and the stream can be written to a
    socket as it is produced. With the signature's `block_size`, a batch is also handed on
    once its records describe COPY_RUN_BYTES of the new file: a 9-byte Copy of 4 MiB is work
    the replica can start on now, not after 64 KiB of such records."""
    batch = bytearray()
    described = 0
    for ins in instructions:
        if isinstance(ins, Copy):
            if ins.index < 0 or ins.count < 1 or ins.index + ins.count - 1 > _U32_MAX:
                raise ValueError(f"cannot encode {ins!r}")
            batch.append(_TAG_COPY)
            batch += _COPY.pack(ins.index, ins.count)
            described += ins.count * block_size
        else:
            data = memoryview(ins.data)
            described += len(data)
            for start in range(0, len(data), MAX_LITERAL):
                piece = data[start : start + MAX_LITERAL]
                batch.append(_TAG_LITERAL)
                batch += _LEN.pack(len(piece))
                if len(piece) < _ENCODE_BATCH:
                    batch += piece
                else:
                    yield bytes(batch)
                    batch.clear()
                    yield bytes(piece)
        if len(batch) >= _ENCODE_BATCH or (block_size and described >= COPY_RUN_BYTES and batch):
            yield bytes(batch)
            batch.clear()
            described = 0
    batch.append(_TAG_END)
    yield bytes(batch)


class _BytesReader:
    """read_exactly over an in-memory stream."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0

    def __call__(self, size: int) -> bytes:
        if self.pos + size > len(self.view):
            raise ProtocolError("instruction stream truncated")
        chunk = bytes(self.view[self.pos : self.pos + size])
        self.pos += size
        return chunk


class InstructionParser:
    """The instruction stream's grammar without I/O: say how many bytes come next, then feed them.

    `decode_instructions` drives it from bytes or a blocking reader; the replica drives it
    from the network with `read_instructions`. `block_count` is the number of blocks of the
    signature the replica sent: a copy outside them is refused. Every malformed input raises
    ProtocolError; a literal never makes anyone read or allocate more than MAX_LITERAL bytes.
    """

    def __init__(self, block_count: int) -> None:
        self.block_count = block_count
        self.done = False
        self._want = 1
        self._tag: int | None = None

    def need(self) -> int:
        return self._want

    def feed(self, data: bytes) -> Instruction | None:
        if len(data) != self._want:
            raise ProtocolError("instruction stream truncated")
        tag, self._tag = self._tag, None
        if tag is None:
            self._read_tag(data[0])
            return None
        self._want = 1
        if tag == _TAG_COPY:
            index, count = _COPY.unpack(data)
            if count < 1 or index + count > self.block_count:
                raise ProtocolError(
                    f"copy of blocks [{index}, {index + count}) outside [0, {self.block_count})"
                )
            return Copy(index, count)
        if tag == _TAG_LITERAL:
            (length,) = _LEN.unpack(data)
            if not 1 <= length <= MAX_LITERAL:
                raise ProtocolError(f"literal length {length} outside [1, {MAX_LITERAL}]")
            self._tag, self._want = _TAG_LITERAL_BODY, length
            return None
        return Literal(bytes(data))  # _TAG_LITERAL_BODY

    def _read_tag(self, tag: int) -> None:
        if tag == _TAG_COPY:
            self._tag, self._want = tag, _COPY.size
        elif tag == _TAG_LITERAL:
            self._tag, self._want = tag, _LEN.size
        elif tag == _TAG_END:
            self.done, self._want = True, 0
        else:
            raise ProtocolError(f"unknown instruction tag {tag:#04x}")


def decode_instructions(
    source: bytes | bytearray | memoryview | ReadExactly, *, block_count: int
) -> Iterator[Instruction]:
    """Parse an instruction stream, lazily, up to and including its end record.

    `source` is the whole stream as bytes (which must then end exactly at the end record) or
    a `read_exactly(n)` callable.
    """
    reader: ReadExactly = (
        _BytesReader(source) if isinstance(source, bytes | bytearray | memoryview) else source
    )
    parser = InstructionParser(block_count)
    while not parser.done:
        instruction = parser.feed(reader(parser.need()))
        if instruction is not None:
            yield instruction
    if isinstance(reader, _BytesReader) and reader.pos != len(reader.view):
        raise ProtocolError("bytes after the end of the instruction stream")


async def read_instructions(
    read: Callable[[int], Awaitable[bytes]], *, block_count: int
) -> AsyncIterator[Instruction]:
    """`decode_instructions` for a stream that arrives over the network."""
    parser = InstructionParser(block_count)
    while not parser.done:
        instruction = parser.feed(await read(parser.need()))
        if instruction is not None:
            yield instruction


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def apply_delta(old_fd: int, instructions: Iterable[Instruction], out_fd: int, block_size: int) -> int:
    """Write the new file to `out_fd` (at its current offset) from the old file on `old_fd`
    (read with pread, offset untouched) and `instructions`; return the bytes written.

    A copy must lie within the old file as it is now: every block of the run must start
    before its end, and only the file's last block may be short. Otherwise ValueError: the
    old file changed since its signature, and the caller should fetch the file whole. The
    caller still verifies the whole-file SHA-256; this check only stops nonsense early.
    """
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block size {block_size} outside [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
    old_size = os.fstat(old_fd).st_size
    step = max(1, _READ_CHUNK // block_size) * block_size
    buf = bytearray(step)
    view = memoryview(buf)
    written = 0
    for ins in instructions:
        if isinstance(ins, Literal):
            _write_all(out_fd, ins.data)
            written += len(ins.data)
            continue
        if ins.index < 0 or ins.count < 1:
            raise ValueError(f"invalid {ins!r}")
        start = ins.index * block_size
        stop = min(start + ins.count * block_size, old_size)
        if stop <= start + (ins.count - 1) * block_size:
            raise ValueError(f"{ins!r} reaches past the old file's {old_size} bytes")
        offset = start
        while offset < stop:
            want = min(step, stop - offset)
            got = _pread_full(old_fd, view[:want], offset)
            if got != want:
                raise ValueError("the old file shrank while the delta was applied")
            _write_all(out_fd, view[:got])
            offset += got
        written += stop - start
    return written
