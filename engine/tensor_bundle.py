"""Read TensorFlow's checkpoint format (TensorBundle) without TensorFlow.

A checkpoint `PREFIX` is an index file `PREFIX.index` and data shards
`PREFIX.data-00000-of-0000N`. The index is an SSTable (LevelDB's table format, as TensorFlow's
`core/lib/io/table*` writes it, uncompressed): data blocks of prefix-compressed key/value entries,
an index block pointing at them, and a 48-byte footer ending in a magic number; every block is
followed by a type byte and the masked CRC32C of block and type. Its values are
`BundleEntryProto`s (key "" holds the `BundleHeaderProto`), each saying which shard holds a
tensor's bytes, where, and their masked CRC32C.

Every checksum is checked. CRC32C runs in numpy: many lanes of the data at once, sixteen bits
of table per lookup, and the lanes' checksums combined by the linearity of CRCs.
"""
from __future__ import annotations

import mmap
import os
import pathlib
import struct
from functools import lru_cache

import numpy as np

from gtt_rules.errors import GraphError

from .proto import saved_model_pb2 as smpb

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78   # CRC32C (Castagnoli), bit-reflected
DT_STRING = 7


# ---- CRC32C ----

@lru_cache(maxsize=None)
def _byte_table() -> np.ndarray:
    """The CRC state after feeding one byte b to the state 0, for every b."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


def _apply(matrix: np.ndarray, states: np.ndarray) -> np.ndarray:
    """A GF(2) linear map (32 columns, one per input bit) applied to each state."""
    bits = (states[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    return np.bitwise_xor.reduce(np.where(bits.astype(bool), matrix, np.uint32(0)), axis=-1)


@lru_cache(maxsize=None)
def _zeros_operator(log2_count: int) -> np.ndarray:
    """The linear map of feeding 2**log2_count zero bytes to a CRC state."""
    if log2_count == 0:
        columns = np.uint32(1) << np.arange(32, dtype=np.uint32)
        return (_byte_table()[columns & 0xFF] ^ (columns >> 8)).astype(np.uint32)
    half = _zeros_operator(log2_count - 1)
    return _apply(half, half)


@lru_cache(maxsize=None)
def _zeros_tables(log2_count: int) -> np.ndarray:
    """`_zeros_operator` as four lookups, one per byte of the state (the map is linear)."""
    byte = np.arange(256, dtype=np.uint32)
    return np.stack([_apply(_zeros_operator(log2_count), byte << (8 * k)) for k in range(4)])


def _feed_zeros(states: np.ndarray, count: int) -> np.ndarray:
    for bit in range(count.bit_length()):
        if count >> bit & 1:
            tables = _zeros_tables(bit)
            states = (tables[0][states & 0xFF] ^ tables[1][(states >> 8) & 0xFF]
                      ^ tables[2][(states >> 16) & 0xFF] ^ tables[3][states >> 24])
    return states


@lru_cache(maxsize=None)
def _row_tables(log2_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookups for the low and high 16 bits of a state followed by 2**log2_bytes zero bytes."""
    per_byte = _zeros_tables(log2_bytes)
    half = np.arange(65536, dtype=np.uint32)
    low = per_byte[0][half & 0xFF] ^ per_byte[1][half >> 8]
    high = per_byte[2][half & 0xFF] ^ per_byte[3][half >> 8]
    return low, high


_LANES = 16384


def crc32c(data) -> int:
    """The CRC32C of a bytes-like object, as TensorFlow's `crc32c::Value` computes it."""
    raw = np.frombuffer(data, dtype=np.uint8)
    n = raw.size
    # The data as rows of `lanes` 32-bit words; lane k holds the words k, k + lanes, ... . Each
    # row is xored into the lanes' states, which then move on by a row's length of zero bytes,
    # so every word ends up where it would in one serial CRC. Zeros in front change no CRC
    # started from 0, so what does not fill a whole row goes, right-aligned, in a first row.
    lanes = 1 << (min(_LANES, max(1, n // 64)).bit_length() - 1)   # a power of two
    row_bytes = 4 * lanes
    head = n % row_bytes
    rows = list(np.frombuffer(data, dtype="<u4", offset=head).reshape(-1, lanes))
    if head or not rows:
        first = np.zeros(row_bytes, dtype=np.uint8)
        first[row_bytes - head:] = raw[:head]
        rows.insert(0, first.view("<u4"))
    low, high = _row_tables(row_bytes.bit_length() - 1)
    states, index = np.zeros(lanes, dtype=np.uint32), np.empty(lanes, dtype=np.uint32)
    low_part, high_part = np.empty_like(states), np.empty_like(states)
    for row in rows[:-1]:
        states ^= row
        low.take(np.bitwise_and(states, 0xFFFF, out=index), out=low_part)
        high.take(np.right_shift(states, 16, out=index), out=high_part)
        np.bitwise_xor(low_part, high_part, out=states)
    states ^= rows[-1]
    # Lane k's last word still has 4 * (lanes - k) bytes to go, its own included: combine the
    # lanes pairwise, each left one moved on by its right neighbour's run, then the last word.
    run = 4
    while states.size > 1:
        states = _feed_zeros(states[0::2], run) ^ states[1::2]
        run *= 2
    states = _feed_zeros(states, 4)
    # The standard CRC starts from all ones and inverts the result.
    start = _feed_zeros(np.array([0xFFFFFFFF], dtype=np.uint32), n)
    return int(states[0] ^ start[0] ^ np.uint32(0xFFFFFFFF))


def unmask(masked: int) -> int:
    """Undo TensorFlow's `crc32c::Mask`, which keeps stored CRCs from looking like data."""
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# ---- SSTable ----

def _varint(data, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise GraphError(f"corrupt checkpoint index: bad varint in {where}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _read_block(data, offset: int, size: int, what: str) -> memoryview:
    end = offset + size
    if offset < 0 or end + _BLOCK_TRAILER_SIZE > len(data):
        raise GraphError(f"corrupt checkpoint index: {what} at offset {offset} lies outside the file")
    kind = data[end]
    (stored,) = struct.unpack_from("<I", data, end + 1)
    if crc32c(data[offset:end + 1]) != unmask(stored):
        raise GraphError(f"corrupt checkpoint index: {what} at offset {offset} fails its CRC32C check")
    if kind != 0:
        raise GraphError(f"unsupported checkpoint index: {what} at offset {offset} is compressed "
                         f"(type {kind}); TensorFlow writes checkpoints uncompressed")
    return data[offset:end]


def _block_entries(block: memoryview, what: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise GraphError(f"corrupt checkpoint index: {what} is too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if restarts < 1 or limit < 0:
        raise GraphError(f"corrupt checkpoint index: {what} has a bad restart count")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(block, pos, limit, what)
        unshared, pos = _varint(block, pos, limit, what)
        value_size, pos = _varint(block, pos, limit, what)
        if shared > len(key) or pos + unshared + value_size > limit:
            raise GraphError(f"corrupt checkpoint index: {what} has an entry past its end")
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        entries.append((key, bytes(block[pos:pos + value_size])))
        pos += value_size
    return entries


def read_table(data: bytes | memoryview) -> dict[bytes, bytes]:
    """Every key and value of an SSTable file's bytes, its block checksums checked."""
    data = memoryview(data)
    if len(data) < _FOOTER_SIZE:
        raise GraphError("corrupt checkpoint index: shorter than a table footer")
    footer = len(data) - _FOOTER_SIZE
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != _TABLE_MAGIC:
        raise GraphError("corrupt checkpoint index: no table magic number at its end (truncated?)")
    end = len(data) - 8
    _, pos = _varint(data, footer, end, "the footer")    # metaindex block: holds nothing we need
    _, pos = _varint(data, pos, end, "the footer")
    index_offset, pos = _varint(data, pos, end, "the footer")
    index_size, pos = _varint(data, pos, end, "the footer")
    table = {}
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, "the index block"),
                                    "the index block"):
        offset, pos = _varint(handle, 0, len(handle), "a block handle")
        size, _ = _varint(handle, pos, len(handle), "a block handle")
        what = "the data block"
        table.update(_block_entries(_read_block(data, offset, size, what), what))
    return table


# ---- TensorBundle ----

class TensorBundle:
    """A checkpoint's entries by key, and their tensors' bytes, checksums checked."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        index_path = pathlib.Path(self.prefix + ".index")
        data = _read_file(index_path)
        try:
            table = read_table(data)
            header = smpb.BundleHeaderProto()
            header.ParseFromString(table.pop(b"", b""))
            self.entries: dict[str, smpb.BundleEntryProto] = {}
            for key, value in table.items():
                entry = smpb.BundleEntryProto()
                entry.ParseFromString(value)
                self.entries[key.decode("utf-8", "replace")] = entry
        except GraphError as e:
            raise e.located(str(index_path)) from None
        except Exception:   # protobuf's DecodeError, and a header that is not one
            raise GraphError("corrupt checkpoint index: an entry is not a BundleEntryProto",
                             path=str(index_path)) from None
        if header.endianness != smpb.BundleHeaderProto.LITTLE:
            raise GraphError("unsupported checkpoint: big-endian tensors", path=str(index_path))
        if header.num_shards < 1:
            raise GraphError("corrupt checkpoint index: no data shards", path=str(index_path))
        self.num_shards = header.num_shards
        self._shards: dict[int, memoryview] = {}

    def shard_path(self, shard: int) -> pathlib.Path:
        """The data file of shard `shard`: `variables.data-00000-of-00001`."""
        return pathlib.Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def _shard(self, shard: int) -> memoryview:
        if shard not in self._shards:
            self._shards[shard] = _read_file(self.shard_path(shard), mapped=True)
        return self._shards[shard]

    def entry(self, key: str) -> smpb.BundleEntryProto:
        """The index entry of tensor `key` (dtype, shape, shard, offset, size, CRC32C); GraphError
        when there is none, or the tensor is saved in slices."""
        entry = self.entries.get(key)
        if entry is None:
            raise GraphError(f"checkpoint has no tensor '{key}'", path=self.prefix + ".index")
        if entry.slices:
            raise GraphError(f"unsupported checkpoint: tensor '{key}' is saved in slices "
                             f"(a partitioned variable)", path=self.prefix + ".index")
        return entry

    def raw(self, key: str) -> memoryview:
        """The stored bytes of tensor `key`, after checking their CRC32C."""
        entry = self.entry(key)
        if not 0 <= entry.shard_id < self.num_shards:
            raise GraphError(f"corrupt checkpoint index: tensor '{key}' names shard "
                             f"{entry.shard_id} of {self.num_shards}", path=self.prefix + ".index")
        shard = self._shard(entry.shard_id)
        where = str(self.shard_path(entry.shard_id))
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > len(shard):
            raise GraphError(f"truncated: tensor '{key}' lies past the end of the file", path=where)
        data = shard[entry.offset:entry.offset + entry.size]
        if entry.dtype != DT_STRING and crc32c(data) != unmask(entry.crc32c):
            raise GraphError(f"corrupt: tensor '{key}' at offset {entry.offset} fails its CRC32C "
                             f"check", path=where)
        return data

    def strings(self, key: str) -> list[bytes]:
        """The elements of string tensor `key`: varint lengths, their masked CRC32C, the bytes.
        The entry's CRC32C covers the lengths as 32-bit words, that checksum, and the bytes."""
        entry = self.entry(key)
        count = int(np.prod([d.size for d in entry.shape.dim])) if entry.shape.dim else 1
        data = self.raw(key)
        where = str(self.shard_path(entry.shard_id))
        lengths, pos = [], 0
        try:
            for _ in range(count):
                length, pos = _varint(data, pos, len(data), f"string tensor '{key}'")
                lengths.append(length)
        except GraphError as e:
            raise e.located(where) from None
        lengths_crc = bytes(data[pos:pos + 4])
        body = bytes(data[pos + 4:])
        if len(lengths_crc) < 4 or sum(lengths) != len(body) or max(lengths, default=0) > 0xFFFFFFFF:
            raise GraphError(f"corrupt: string tensor '{key}' does not match its lengths", path=where)
        covered = np.array(lengths, dtype="<u4").tobytes() + lengths_crc + body
        if crc32c(covered) != unmask(entry.crc32c):
            raise GraphError(f"corrupt: tensor '{key}' at offset {entry.offset} fails its CRC32C "
                             f"check", path=where)
        out, pos = [], 0
        for length in lengths:
            out.append(body[pos:pos + length])
            pos += length
        return out


def _read_file(path: pathlib.Path, *, mapped: bool = False) -> memoryview:
    try:
        with open(path, "rb") as f:
            if not mapped:
                return memoryview(f.read())
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except FileNotFoundError:
        raise GraphError("no such file (the SavedModel's checkpoint is incomplete)", path=str(path)) from None
    except OSError as e:
        raise GraphError(f"cannot read: {e.strerror}", path=str(path)) from None
