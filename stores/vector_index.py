"""The FAISS side of the notepad: exact inner-product search over L2-normalised chunk embeddings.

``IndexIDMap2(IndexFlatIP)``: the FAISS ids are the SQL primary keys of the chunks, so SQL stays
the source of truth and this index is a cache that can always be rebuilt from it. Filters (scope
and metadata) are turned into an ``IDSelectorBitmap`` *before* the search, so the top k are the
top k of the allowed set, never a post-filtered remainder.

On disk the index is one file: an 8-byte magic, a format version, the id of the last history
event the index reflects (``synced_to``), the SHA-256 of the payload, the identity of the memory
it belongs to (16 bytes of a UUID; version 2, zero when unknown) and the FAISS serialisation.
The checksum is verified before FAISS parses anything, so a truncated or forged file is rejected
with a clear error instead of reaching the C++ reader.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import uuid
from pathlib import Path

import faiss
import numpy as np

from memsdk.errors import IndexCorruptedError, InputError
from memsdk.files import atomic_write_bytes

__all__ = ["INDEX_NAME", "VectorIndex"]

INDEX_NAME = "notepad.faiss"
_MAGIC = b"MEMSDKIX"
_VERSION = 2
_HEADER_V1 = struct.Struct("<8sIq32s")  # magic, version, synced_to, sha256(payload)
_HEADER = struct.Struct("<8sIq32s16s")  # version 2 adds the memory's identity


def _rebuild_hint(directory: Path) -> str:
    return f"rebuild it from the database with: memsdk rebuild-index --memory {directory}"


class VectorIndex:
    """A thread-safe FAISS ``IndexIDMap2(IndexFlatIP)`` keyed by chunk id.

    Args:
        dim: embedding width.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()
        self.dirty = False
        # The id of the newest SQL history event whose effect the index holds; the notepad
        # replays later events to catch up with writes it did not see (crash, other process).
        self.synced_to = 0
        self.memory_id = ""  # the memory the index belongs to (UUID hex); "" when unknown

    # ---- persistence -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename)."""
        with self._lock:
            payload = faiss.serialize_index(self._index).tobytes()
            synced_to = self.synced_to
            self.dirty = False
        identity = uuid.UUID(hex=self.memory_id).bytes if self.memory_id else bytes(16)
        header = _HEADER.pack(
            _MAGIC, _VERSION, synced_to, hashlib.sha256(payload).digest(), identity
        )
        atomic_write_bytes(path, header + payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, dim: int) -> VectorIndex:
        """Read an index written by :meth:`save`.

        Raises:
            IndexCorruptedError: the file is missing, truncated, forged, of another format
                version or of another width; the message names the rebuild command.
        """
        path = Path(path)
        hint = _rebuild_hint(path.parent)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise IndexCorruptedError(f"vector index {path} is missing: {hint}") from None
        if len(blob) < _HEADER_V1.size:
            raise IndexCorruptedError(f"vector index {path} is truncated: {hint}")
        magic, version, synced_to, digest = _HEADER_V1.unpack_from(blob)
        if magic != _MAGIC:
            raise IndexCorruptedError(f"{path} is not a memsdk vector index: {hint}")
        if version not in (1, _VERSION):
            raise IndexCorruptedError(
                f"vector index {path} has format version {version}, expected {_VERSION}: {hint}"
            )
        identity = ""
        start = _HEADER_V1.size
        if version == 2:
            if len(blob) < _HEADER.size:
                raise IndexCorruptedError(f"vector index {path} is truncated: {hint}")
            raw_id = _HEADER.unpack_from(blob)[4]
            identity = uuid.UUID(bytes=raw_id).hex if any(raw_id) else ""
            start = _HEADER.size
        payload = blob[start:]
        if hashlib.sha256(payload).digest() != digest:
            raise IndexCorruptedError(
                f"vector index {path} fails its checksum (truncated or altered): {hint}"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as e:
            raise IndexCorruptedError(f"vector index {path} cannot be read ({e}): {hint}") from None
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
            raise IndexCorruptedError(
                f"vector index {path} holds a {type(index).__name__} of width {index.d}, "
                f"expected IndexIDMap2 of width {dim}: {hint}"
            )
        out = cls(dim)
        out._index = index
        out.synced_to = synced_to
        out.memory_id = identity
        return out

    # ---- updates -----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (N, dim) float32, rows L2-normalised, under ``ids`` (N,) int64."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise InputError(
                f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        if len(ids) == 0:
            return
        with self._lock:
            self._index.add_with_ids(vectors, ids)
            self.dirty = True

    def replace(self, remove_ids: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Remove ``remove_ids`` and add ``vectors`` under ``ids`` as one step: a concurrent
        search sees the index before or after, never in between."""
        with self._lock:
            self.remove(remove_ids)
            self.add(ids, vectors)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (absent ids are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        with self._lock:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
            self.dirty = self.dirty or removed > 0
        return removed

    def ids(self) -> np.ndarray:
        """All ids in the index, (ntotal,) int64."""
        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    # ---- search ------------------------------------------------------------------------------

    def search(
        self, query: np.ndarray, *, k: int, allowed_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids among ``allowed_ids`` by inner product with ``query`` (dim,).

        Returns:
            ``(ids, scores)``, each (m,) with m <= k, best first.
        """
        allowed_ids = np.asarray(allowed_ids, dtype=np.int64)
        if len(allowed_ids) == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        # A bitmap over the id range: O(1) membership, and cheap to build from a numpy array.
        bits = np.zeros(int(allowed_ids.max()) + 1, dtype=bool)
        bits[allowed_ids] = True
        bitmap = np.packbits(bits, bitorder="little")
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(bitmap))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            scores, ids = self._index.search(q, min(k, len(allowed_ids)), params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]
