"""The FAISS side of the notepad: inner-product search over L2-normalised chunk embeddings.

The FAISS ids are the SQL primary keys of the chunks, so SQL stays the source of truth and this
index is a cache that can always be rebuilt from it. Filters (scope and metadata) restrict the
search *before* it runs, so the top k are the top k of the allowed set, never a post-filtered
remainder.

Two layouts, chosen by size:

- up to ``ivf_threshold`` vectors, ``IndexIDMap2(IndexFlatIP)``: exact, and a scan of a few
  hundred thousand vectors is quick;
- past it, an IVF index over inner product (``IndexIVFScalarQuantizer``), whose search scans
  only the ``nprobe`` lists nearest the query. It keeps each vector whole in float16, half the
  bytes of float32 (0.77 GB instead of 1.54 at 1M vectors), each component rounded to 11
  significant bits, and deletes by id (HNSW cannot delete). On 9,016 real chunk vectors
  (``benchmarks/vector_index.py``, 200 held-out chunks as queries, both layouts at nprobe 51
  of 225) its recall@10 against flat search was 0.993, float32's 0.996: a few near-identical
  chunks (template-shared log lines) trade places. It is
  trained on a sample of the stored vectors with about 4*sqrt(n) lists, and ``nprobe`` is the
  smallest that reaches recall@10 >= 0.995 against exact search, measured then on 500 stored
  vectors used as queries: a margin over the 0.99 promised (:data:`TARGET_RECALL`), since an
  nprobe calibrated at 0.99 on 200 of them gave 0.989 on held-out real queries
  (benchmarks/README.md, ``vector_index.py``). Both figures are kept
  (:attr:`VectorIndex.nprobe`, :attr:`VectorIndex.recall`).
  A hashtable direct map finds any vector by id, so a small allowed set (a scope, a filter) is
  searched exactly over its own vectors instead of through the probed lists, where a small scope
  could lose results that sit in unprobed lists.

Training runs off the write path. It takes about 2.5 minutes at 1M vectors on two cores
(benchmarks/README.md), and it used to run inside the write that crossed the threshold (or the
open that loaded a large flat file), with every search waiting on the index lock meanwhile.
Now that write only notes the ids the index holds and starts one named daemon thread per
index, which trains while the current index keeps serving searches and taking adds and removes;
each change made meanwhile logs its ids. The thread reads the vectors it needs from the current
index by id, in blocks of 4,096 under the lock (a sample for k-means, then every vector, each
block added to the new index before the next is read): the process holds the current index and
the new one, never a third copy. An id removed since is skipped and one changed is read as it
is now; the replay below brings both up to date. The recall is measured on the new index's own
lists. Retraining an IVF of 827,392 clustered synthetic vectors (``benchmarks/retraining.py``),
the process held 1,327 MB before it and peaked 861 MB above that, where float32 vectors and a
copy of them took 2,240 MB and 2,419 MB more.
When the new index is ready, the thread replays the logged ids into it (the vectors the
current index holds for them now, or their absence), in rounds outside the lock while many
came in, the last round under the lock, and then swaps it in and marks the index dirty, so
the next save writes it. One training runs at a time; a training abandoned meanwhile
(:meth:`VectorIndex.abandon_layout`: a close, or a rebuild that replaced the index) drops its
result at its next step. :meth:`VectorIndex.wait_for_layout` waits for
it (a flush, a rebuild, the benchmarks). Until the swap the saved file is the flat one, so a
crash or a close mid-training loses nothing: the next open trains again.

On disk the index is one file: an 8-byte magic, a format version, the id of the last history
event the index reflects (``synced_to``), the SHA-256 of the payload, the identity of the memory
it belongs to (16 bytes of a UUID; version 2, zero when unknown) and the FAISS serialisation.
Version 3 (an IVF of float32 vectors, written by older releases) and version 4 (an IVF of
float16 vectors, written since; flat files stay version 2, readable by older releases) put
before the FAISS bytes how many vectors the IVF was trained at and its measured recall, both
covered by the checksum. The checksum is verified before FAISS parses anything, so a truncated
or forged file is rejected with a clear error instead of reaching the C++ reader.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import math
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from memsdk.errors import IndexCorruptedError, InputError
from memsdk.files import atomic_writer
from memsdk.stores.background import background_thread

__all__ = ["EXACT_SEARCH_SHARE", "INDEX_NAME", "IVF_THRESHOLD", "TARGET_RECALL", "VectorIndex"]

logger = logging.getLogger(__name__)

INDEX_NAME = "notepad.faiss"
_MAGIC = b"MEMSDKIX"
_VERSION = 2
_VERSION_IVF = 3  # an IVF of float32 vectors (IndexIVFFlat): read, retrained into version 4
_VERSION_IVF16 = 4  # an IVF of float16 vectors (IndexIVFScalarQuantizer), written since
_HEADER_V1 = struct.Struct("<8sIq32s")  # magic, version, synced_to, sha256(payload)
_HEADER = struct.Struct("<8sIq32s16s")  # version 2 adds the memory's identity
_IVF_META = struct.Struct("<qd")  # version 3+: vectors the IVF was trained at, measured recall

IVF_THRESHOLD = 200_000
# Allowed sets up to this share of the index are searched exactly over their own vectors. A
# larger set probes the lists with its bitmap, up to every list for a small set. At 1M float16
# vectors, with another process busy on the second core, reading vectors by id cost about 2.4 us
# each (10,000 in 24.2 ms p50; float32 ones took 1.1 us), and the two paths met near 2,500 ids
# (exact 9.0 ms p50, probed 9.8; at 5,000 ids 14.9 against 9.5): 1/400 of the index.
EXACT_SEARCH_SHARE = 1 / 400
TARGET_RECALL = 0.99  # recall@10 against exact search promised for queries
_CALIBRATION_RECALL = 0.995  # what nprobe must reach on the stored vectors it is calibrated on
_RECALL_K = 10
_RECALL_QUERIES = 500
_TRAIN_PER_LIST = 40  # FAISS asks for at least 39 training points per list
_RETRAIN_GROWTH = 4  # retrain once the index holds this many times what it was trained at
_SEED = 1234
# Vectors a training reads from the index under its lock at a time, and adds to the new index
# before it reads more: a search waits for one block at most (reading a float16 vector by id
# took about 2.4 us, so 4,096 take about 10 ms).
_COPY_BLOCK = 1 << 12
_READ_BLOCK = 1 << 20  # bytes of an index file hashed at a time
# Changes made during a training replayed under the lock at the swap; more are replayed first
# in rounds outside it (adding 100k vectors to a 4,000-list IVF takes seconds).
_REPLAY_UNDER_LOCK = 4096


class _Abandoned(Exception):
    """The training's result is no longer wanted (the index was closed or replaced)."""


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run FAISS on the calling thread only. One query does its work on one thread anyway, but
    starting an OpenMP team costs whenever the other cores are busy: on the 2-core machine
    under load, a search of 206 vectors took 8.0 ms with 2 threads and 0.06 ms with one. The
    setting is the calling thread's own (an OpenMP per-thread value), so it is restored after.
    """
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; nothing where
    there is none). A replaced index is freed into the C heap, which glibc keeps: after an IVF
    retraining at 400,000 vectors the process still held 1,012 MB more than before it, and
    83 MB less with this trim (``benchmarks/README.md``, ``vector_index.py``)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Callable[[int], int] | bool | None = None


def _rebuild_hint(directory: Path) -> str:
    return f"rebuild it from the database with: memsdk rebuild-index --memory {directory}"


_FLOAT16 = (faiss.ScalarQuantizer.QT_fp16, False)  # each vector whole, not as a residual


def _new_ivf(dim: int, nlist: int) -> faiss.IndexIVFScalarQuantizer:
    """An untrained IVF index over inner product of ``nlist`` lists storing each vector whole
    in float16 (not as a residual to its list's centroid): half the bytes of float32, and a
    stored vector decodes by itself (:func:`_list_vectors`)."""
    qtype, by_residual = _FLOAT16
    quantizer = faiss.IndexFlatIP(dim)
    # FAISS's Python wrapper keeps the quantizer alive beside the index.
    return faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, qtype, faiss.METRIC_INNER_PRODUCT, by_residual
    )


def _list_vectors(index: faiss.IndexIVFScalarQuantizer, lst: int) -> np.ndarray:
    """The vectors stored in list ``lst`` of a float16 IVF index (:func:`_new_ivf`), (size,
    dim) float32."""
    size = index.invlists.list_size(lst)
    codes = faiss.rev_swig_ptr(index.invlists.get_codes(lst), size * index.code_size)
    return np.frombuffer(codes, np.float16).reshape(size, index.d).astype(np.float32)


def _list_ids(index: faiss.IndexIVF) -> np.ndarray:
    """Every id of an IVF index, (n,) int64, without copying its vectors."""
    invlists = index.invlists
    ids = [
        faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst)).copy()
        for lst in range(index.nlist)
        if invlists.list_size(lst)
    ]
    return np.concatenate(ids).astype(np.int64, copy=False) if ids else np.empty(0, np.int64)


def _recall_at_k(
    index: faiss.IndexIVF, queries: np.ndarray, left_out: list[np.ndarray], truth: np.ndarray
) -> float:
    """Recall@k of ``index`` at its current ``nprobe``, each query searched without the ids
    ``left_out[row]`` and ``truth`` (q,) being the exact k-th best score without them. A hit
    is a result scoring at least that: logs hold many identical vectors (template sharing),
    and which of tied duplicates comes back is not a miss."""
    hits = 0
    for row, query in enumerate(queries):
        params = faiss.SearchParametersIVF(
            sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(left_out[row])), nprobe=index.nprobe
        )
        scores, _ = index.search(query[None, :], _RECALL_K, params=params)
        hits += int(np.count_nonzero(scores[0] >= truth[row] - 1e-5))
    return hits / (_RECALL_K * len(queries))


def _exact_kth_scores(
    index: faiss.IndexIVFScalarQuantizer, queries: np.ndarray, own_lists: np.ndarray
) -> np.ndarray:
    """(q,) the exact k-th best inner product of each query over every vector of ``index``
    but those of its own list ``own_lists[row]``, read list by list from the index itself (no
    copy of the vectors is held)."""
    best = np.full((len(queries), _RECALL_K), -np.inf, dtype=np.float32)
    for lst in range(index.nlist):
        if index.invlists.list_size(lst) == 0:
            continue
        scores = queries @ _list_vectors(index, lst).T  # (q, size)
        scores[own_lists == lst] = -np.inf
        merged = np.concatenate([best, scores], axis=1)
        best = -np.partition(-merged, _RECALL_K - 1, axis=1)[:, :_RECALL_K]
    return best.min(axis=1)


# Reads the vectors held now under some of the given ids, in blocks, as (held ids, vectors).
Reader = Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray]]]


def _train_ivf(
    ids: np.ndarray, read: Reader, dim: int, *, abandoned: Callable[[], bool]
) -> tuple[faiss.IndexIVF, int, float]:
    """A float16 IVF index (:func:`_new_ivf`) holding the vectors held under ``ids`` (read
    through ``read`` in blocks, each added before the next is read), with ``nprobe`` set to
    the smallest that reaches :data:`_CALIBRATION_RECALL`; returns it, ``nprobe`` and that
    recall. ``abandoned()`` is checked between steps (k-means itself cannot be stopped),
    raising :class:`_Abandoned`; ``read`` raises it too.

    The queries are stored vectors (a seeded sample), each searched with its whole list left
    out, in both the exact and the probed ranking. Left in, a stored vector finds its near
    duplicates in its own list, the first one probed, and the recall says little about real
    queries (questions over logs), which resemble no chunk: on real logs, nprobe chosen that
    way scored recall 0.91 for queries from a log system the index did not hold. Without its
    own list a query is such a stranger, and the first probe is spent on the empty list, so
    the measure errs on the safe side.
    """
    n = len(ids)
    rng = np.random.default_rng(_SEED)

    def sample(size: int, *, replace: bool) -> np.ndarray:
        chosen = ids[np.sort(rng.choice(n, size=min(n, size), replace=replace))]
        blocks = [vectors for _, vectors in read(chosen)]
        return np.concatenate(blocks) if blocks else np.empty((0, dim), np.float32)

    nlist = max(1, min(n // _TRAIN_PER_LIST, round(4 * math.sqrt(n))))
    index = _new_ivf(dim, nlist)
    index.cp.niter = 10  # k-means converges enough for list assignment; training is the cost
    index.cp.seed = _SEED
    index.cp.spherical = True  # unit-norm centroids for inner product on unit vectors
    index.train(sample(_TRAIN_PER_LIST * nlist, replace=False))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    queries = sample(_RECALL_QUERIES, replace=True)
    for held, vectors in read(ids):  # read() checks for abandonment before each block
        index.add_with_ids(vectors, held)
    own_lists = index.quantizer.search(queries, 1)[1][:, 0]
    left_out = [
        faiss.rev_swig_ptr(
            index.invlists.get_ids(int(lst)), index.invlists.list_size(int(lst))
        ).astype(np.int64)
        for lst in own_lists
    ]
    truth = _exact_kth_scores(index, queries, own_lists)

    def recall(nprobe: int) -> float:
        if abandoned():
            raise _Abandoned
        index.nprobe = nprobe
        return _recall_at_k(index, queries, left_out, truth)

    # Doubling finds a bracket, bisection the smallest nprobe inside it.
    low, high = 0, 1
    while high < nlist and recall(high) < _CALIBRATION_RECALL:
        low, high = high, min(nlist, high * 2)
    while high - low > 1:
        middle = (low + high) // 2
        if recall(middle) >= _CALIBRATION_RECALL:
            high = middle
        else:
            low = middle
    return index, high, recall(high)


def _replay(
    index: faiss.IndexIVF, changed: np.ndarray, held: np.ndarray, vectors: np.ndarray | None
) -> None:
    """Bring ``index`` to the current state of the ``changed`` ids: each removed, then those
    ``held`` now added back with their current ``vectors``."""
    if len(changed):
        index.remove_ids(faiss.IDSelectorArray(len(changed), faiss.swig_ptr(changed)))
    if vectors is not None:
        index.add_with_ids(vectors, held)


def _read_header(f: BinaryIO, path: Path, hint: str) -> tuple[int, int, str, int, float | None]:
    """Check an index file's header and its payload's checksum, reading the payload in blocks
    (never the whole file in memory), and leave ``f`` at the start of the FAISS bytes: returns
    its version, ``synced_to``, the memory's identity, and the IVF's training size and recall.

    Raises:
        IndexCorruptedError: a truncated, forged or altered file, or another format version.
    """
    head = f.read(_HEADER.size)
    if len(head) < _HEADER_V1.size:
        raise IndexCorruptedError(f"vector index {path} is truncated: {hint}")
    magic, version, synced_to, digest = _HEADER_V1.unpack_from(head)
    if magic != _MAGIC:
        raise IndexCorruptedError(f"{path} is not a memsdk vector index: {hint}")
    if version not in (1, _VERSION, _VERSION_IVF, _VERSION_IVF16):
        raise IndexCorruptedError(
            f"vector index {path} has format version {version}, expected {_VERSION_IVF16} "
            f"or older: {hint}"
        )
    identity = ""
    start = _HEADER_V1.size
    if version >= 2:
        if len(head) < _HEADER.size:
            raise IndexCorruptedError(f"vector index {path} is truncated: {hint}")
        raw_id = _HEADER.unpack_from(head)[4]
        identity = uuid.UUID(bytes=raw_id).hex if any(raw_id) else ""
        start = _HEADER.size
    # The checksum is verified before FAISS parses a byte: a forged file never reaches its
    # C++ reader.
    f.seek(start)
    payload = hashlib.sha256()
    while block := f.read(_READ_BLOCK):
        payload.update(block)
    if payload.digest() != digest:
        raise IndexCorruptedError(
            f"vector index {path} fails its checksum (truncated or altered): {hint}"
        )
    f.seek(start)
    trained_on, recall = 0, None
    if version >= _VERSION_IVF:
        meta = f.read(_IVF_META.size)
        if len(meta) < _IVF_META.size:
            raise IndexCorruptedError(f"vector index {path} is truncated: {hint}")
        trained_on, recall = _IVF_META.unpack(meta)
    return version, synced_to, identity, trained_on, recall


class VectorIndex:
    """A thread-safe FAISS index keyed by chunk id: flat up to ``ivf_threshold`` vectors, IVF
    past it (see the module docstring).

    Args:
        dim: embedding width.
        ivf_threshold: size past which the index becomes an IVF index.
        exact_limit: allowed sets up to this size are searched exactly on an IVF index; None:
            up to ``EXACT_SEARCH_SHARE`` of the vectors it holds.
    """

    def __init__(
        self, dim: int, *, ivf_threshold: int = IVF_THRESHOLD, exact_limit: int | None = None
    ) -> None:
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.exact_limit = exact_limit
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()
        # present[i] is True when id i holds a vector: ids of chunks still waiting for theirs
        # are dropped before an exact IVF search reads vectors by id.
        self._present = np.zeros(0, dtype=bool)
        self.trained_on = 0  # vectors the IVF was trained at; 0 for a flat index
        self.recall: float | None = None  # measured recall@10 of the IVF; None when exact
        self.dirty = False
        # The id of the newest SQL history event whose effect the index holds; the notepad
        # replays later events to catch up with writes it did not see (crash, other process).
        self.synced_to = 0
        self.memory_id = ""  # the memory the index belongs to (UUID hex); "" when unknown
        # The background training (see the module docstring): its thread, the ids changed
        # since its snapshot (None when none runs), and a count bumped to abandon it.
        self._training: threading.Thread | None = None
        self._changes: list[np.ndarray] | None = None
        self._generation = 0
        self._failed_at = 0  # size at which the last training failed; retried past twice that

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf"`` (approximate beyond small allowed sets)."""
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def nprobe(self) -> int | None:
        """Lists an IVF search probes (None for a flat index)."""
        return int(self._index.nprobe) if self.kind == "ivf" else None

    @property
    def nlist(self) -> int | None:
        """Lists of the IVF index (None for a flat index)."""
        return int(self._index.nlist) if self.kind == "ivf" else None

    @property
    def training(self) -> bool:
        """Whether a new IVF layout is being trained in the background."""
        return self._training is not None

    # ---- persistence -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename).

        FAISS writes straight into the temp file, hashed as it goes, and the header (which
        holds the hash) is filled in last: serialised in memory first, a million vectors took
        the 1.5 GB index twice more over (``benchmarks/vector_index.py``'s peak RSS). The
        writing holds the index lock, as the serialising did (the save took 2.0 s at 1M
        vectors, fsync included, which runs after the lock is let go).
        """
        identity = uuid.UUID(hex=self.memory_id).bytes if self.memory_id else bytes(16)
        digest = hashlib.sha256()
        try:
            with atomic_writer(path) as f:
                f.write(bytes(_HEADER.size))

                def write(piece: bytes) -> int:
                    digest.update(piece)
                    return f.write(piece)

                with self._lock:
                    if self.kind == "ivf":
                        write(_IVF_META.pack(self.trained_on, self.recall or 0.0))
                        flat32 = isinstance(self._index, faiss.IndexIVFFlat)
                        version = _VERSION_IVF if flat32 else _VERSION_IVF16
                    else:
                        version = _VERSION
                    faiss.write_index(self._index, faiss.PyCallbackIOWriter(write))
                    synced_to, self.dirty = self.synced_to, False
                f.seek(0)
                f.write(_HEADER.pack(_MAGIC, version, synced_to, digest.digest(), identity))
        except BaseException:
            self.dirty = True  # not saved after all: the next save tries again
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        ivf_threshold: int = IVF_THRESHOLD,
        exact_limit: int | None = None,
    ) -> VectorIndex:
        """Read an index written by :meth:`save` (any format version); a flat index past
        ``ivf_threshold`` starts training an IVF index in the background, which is marked
        dirty (to be saved so) once it is swapped in (:meth:`wait_for_layout`).

        Raises:
            IndexCorruptedError: the file is missing, truncated, forged, of another format
                version or of another width; the message names the rebuild command.
        """
        path = Path(path)
        hint = _rebuild_hint(path.parent)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise IndexCorruptedError(f"vector index {path} is missing: {hint}") from None
        with f:
            version, synced_to, identity, trained_on, recall = _read_header(f, path, hint)
            try:
                # Parsed from the file in pieces, not from a copy of it in memory.
                index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
            except RuntimeError as e:
                raise IndexCorruptedError(
                    f"vector index {path} cannot be read ({e}): {hint}"
                ) from None
        ivf_layouts = {
            _VERSION_IVF: faiss.IndexIVFFlat,
            _VERSION_IVF16: faiss.IndexIVFScalarQuantizer,
        }
        expected = ivf_layouts.get(version, faiss.IndexIDMap2)
        if (
            not isinstance(index, expected)
            or index.d != dim
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
            or (version == _VERSION_IVF16 and (index.sq.qtype, index.by_residual) != _FLOAT16)
        ):
            raise IndexCorruptedError(
                f"vector index {path} holds a {type(index).__name__} of width {index.d}, "
                f"expected {expected.__name__} over inner product of width {dim}: {hint}"
            )
        out = cls(dim, ivf_threshold=ivf_threshold, exact_limit=exact_limit)
        out._index = index
        out.synced_to = synced_to
        out.memory_id = identity
        if isinstance(index, faiss.IndexIVF):
            # Read by id (exact search of small sets, deletes): a hashtable, kept by FAISS's
            # own format, rebuilt here should an older writer have left none.
            if index.direct_map.type != faiss.DirectMap.Hashtable:
                index.set_direct_map_type(faiss.DirectMap.Hashtable)
            out.trained_on, out.recall = int(trained_on), float(recall)
            ids = _list_ids(index)
        else:
            ids = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
        out._mark(ids, True)
        out.choose_layout()
        return out

    # ---- updates -----------------------------------------------------------------------------

    def _mark(self, ids: np.ndarray, value: bool) -> None:
        if len(ids) == 0:
            return
        top = int(ids.max()) + 1
        if top > len(self._present):
            grown = np.zeros(max(top, 2 * len(self._present)), dtype=bool)
            grown[: len(self._present)] = self._present
            self._present = grown
        self._present[ids] = value

    def _held(self, ids: np.ndarray) -> np.ndarray:
        """The ids of ``ids`` that hold a vector."""
        inside = ids[(ids >= 0) & (ids < len(self._present))]
        return inside[self._present[inside]]

    def _grown(self) -> bool:
        """Past the threshold while flat, or grown well past what the IVF was trained at (its
        lists were sized for fewer vectors and grow long)."""
        n = int(self._index.ntotal)
        if n <= 2 * self._failed_at:
            return False
        if self.kind == "flat":
            return n > self.ivf_threshold
        # An IVF of float32 vectors (format version 3) is retrained once into float16.
        flat32 = isinstance(self._index, faiss.IndexIVFFlat)
        return flat32 or n > _RETRAIN_GROWTH * self.trained_on

    def choose_layout(self) -> None:
        """Start training an IVF index in the background if past ``ivf_threshold`` (or a new
        one for an IVF grown well past its training size), unless a training runs already;
        :meth:`add` does this itself, a bulk load calls it once at the end, and
        :meth:`wait_for_layout` waits for the result."""
        with self._lock:
            if self._training is None and self._grown():
                self._start_training()

    def wait_for_layout(self, timeout: float | None = None) -> bool:
        """Wait until no training runs (one that finishes may start the next, if the index
        grew past its retraining size meanwhile); returns False if ``timeout`` seconds passed
        first. A flush waits here in short slices, so that a close can stop it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._training
            if thread is None:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
            if thread.is_alive():
                return False

    def abandon_layout(self) -> None:
        """Drop the training in flight: its thread stops at its next step (k-means cannot be
        interrupted) and keeps nothing, and the index stays as it is. Called at close (the
        saved file stays the flat one, and the next open trains again) and when a rebuild
        replaces the index."""
        with self._lock:
            self._generation += 1
            self._training = None
            self._changes = None

    def _start_training(self) -> None:
        """Note the ids held now and train on their vectors in a new thread, which reads them
        in blocks from the index as it goes (:meth:`_read`). Under the lock."""
        ids = self.ids()
        self._changes = []
        self._training = background_thread(
            self._train, args=(ids, self._generation), name="memsdk-ivf-training"
        )
        logger.info("training an IVF index on %d vectors in the background", len(ids))
        self._training.start()

    def _read(self, ids: np.ndarray, generation: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The vectors the index holds now under ``ids``, as (held ids, vectors) blocks of up
        to :data:`_COPY_BLOCK`, each read under the lock (a search waits for one block only);
        raises :class:`_Abandoned` once the training of ``generation`` is."""
        for at in range(0, len(ids), _COPY_BLOCK):
            with self._lock:
                if self._generation != generation:
                    raise _Abandoned
                held = self._held(ids[at : at + _COPY_BLOCK])
                vectors = self._index.reconstruct_batch(held) if len(held) else None
            if vectors is not None:  # the lock is let go while the caller uses the block
                yield held, vectors

    def _train(self, ids: np.ndarray, generation: int) -> None:
        """The training thread: train on the vectors held under ``ids`` (an id removed since is
        skipped, one changed is read as it is now: the replay at the swap covers both), catch
        up with the changes, swap in."""
        started = time.perf_counter()
        try:
            index, nprobe, recall = _train_ivf(
                ids,
                lambda some: self._read(some, generation),
                self.dim,
                abandoned=lambda: self._generation != generation,
            )
            index.nprobe = nprobe
            if self._swap_in(index, len(ids), recall, generation):
                _return_freed_memory()  # the old index's, and what the training freed
                logger.info(
                    "IVF index of %d lists (nprobe %d, recall@10 %.3f) in use after %.1f s",
                    index.nlist,
                    nprobe,
                    recall,
                    time.perf_counter() - started,
                )
        except _Abandoned:
            logger.info("IVF training abandoned (index closed or replaced)")
        except Exception:
            # The flat (or older IVF) index keeps serving; retried once it has doubled.
            logger.exception("training an IVF index on %d vectors failed", len(ids))
            with self._lock:
                if self._generation == generation:
                    self._failed_at = len(ids)
        finally:
            with self._lock:
                if self._training is threading.current_thread():
                    self._training = None
                    self._changes = None

    def _swap_in(
        self, index: faiss.IndexIVF, trained_on: int, recall: float, generation: int
    ) -> bool:
        """Replay into ``index`` the ids changed since the snapshot, then make it the index;
        False if the training was abandoned meanwhile."""
        while True:
            with self._lock:
                if self._generation != generation or self._changes is None:
                    return False
                changed = np.unique(np.concatenate(self._changes or [np.empty(0, np.int64)]))
                self._changes = []
                held = self._held(changed)
                vectors = self._index.reconstruct_batch(held) if len(held) else None
                if len(changed) <= _REPLAY_UNDER_LOCK:
                    _replay(index, changed, held, vectors)
                    self._index, self.trained_on, self.recall = index, trained_on, recall
                    self.dirty = True
                    self._training = None
                    self._changes = None
                    self.choose_layout()  # grown past its retraining size meanwhile
                    return True
            _replay(index, changed, held, vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (N, dim) float32, rows L2-normalised, under ``ids`` (N,) int64; an id
        already held is replaced."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise InputError(
                f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        if len(ids) == 0:
            return
        with self._lock:
            # An IVF's id hashtable keeps one entry per id: a second copy would be unreachable
            # by id and undeletable, so a held id is removed before it is added again.
            self.remove(self._held(ids))
            self._index.add_with_ids(vectors, ids)
            self._mark(ids, True)
            if self._changes is not None:
                self._changes.append(ids.copy())
            self.dirty = True
            self.choose_layout()

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
            if self.kind == "ivf":
                # The hashtable direct map removes by an explicit id array only.
                selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
            else:
                selector = faiss.IDSelectorBatch(ids)
            removed = int(self._index.remove_ids(selector))
            if self._changes is not None and removed:
                self._changes.append(self._held(ids))
            self._mark(self._held(ids), False)
            self.dirty = self.dirty or removed > 0
        return removed

    def ids(self) -> np.ndarray:
        """All ids in the index, (ntotal,) int64, ascending."""
        with self._lock:
            return np.flatnonzero(self._present).astype(np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    # ---- search ------------------------------------------------------------------------------

    def search(
        self, query: np.ndarray, *, k: int, allowed_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids among ``allowed_ids`` by inner product with ``query`` (dim,).

        Exact on a flat index, and on an IVF index for allowed sets of up to ``exact_limit``
        ids (by default ``EXACT_SEARCH_SHARE`` of the index); a larger set goes through the
        probed lists.

        Returns:
            ``(ids, scores)``, each (m,) with m <= k, best first.
        """
        allowed_ids = np.asarray(allowed_ids, dtype=np.int64)
        if len(allowed_ids) == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            # Only a small set is sorted and checked id by id: at 1M ids that alone would take
            # longer than the probe. In a large one, ids without a vector never match the bitmap.
            limit = self.exact_limit
            if limit is None:
                limit = int(self._index.ntotal * EXACT_SEARCH_SHARE)
            if self.kind == "ivf" and len(allowed_ids) <= limit:
                return self._exact(q[0], k=k, ids=self._held(np.unique(allowed_ids)))
            params = self._params(allowed_ids)
            with _one_thread():
                scores, ids = self._index.search(q, min(k, len(allowed_ids)), params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def _params(self, allowed_ids: np.ndarray) -> faiss.SearchParameters:
        # A bitmap over the id range: O(1) membership, and cheap to build from a numpy array.
        bits = np.zeros(int(allowed_ids.max()) + 1, dtype=bool)
        bits[allowed_ids] = True
        selector = faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little"))
        if self.kind == "flat":
            return faiss.SearchParameters(sel=selector)
        # The recall was measured with every vector allowed; a set holding a share s of the
        # index leaves about s of each probed list, so probing nprobe / s lists scans as many
        # allowed vectors as the measurement did.
        share = len(allowed_ids) / max(1, int(self._index.ntotal))
        nprobe = min(int(self._index.nlist), math.ceil(self._index.nprobe / share))
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)

    def _exact(
        self, query: np.ndarray, *, k: int, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of held ``ids``: their vectors read by id, scored against ``query``."""
        if len(ids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        vectors = self._index.reconstruct_batch(ids)
        scores = vectors @ query
        top = min(k, len(ids))
        best = np.argpartition(-scores, top - 1)[:top] if top < len(ids) else np.arange(len(ids))
        best = best[np.argsort(-scores[best], kind="stable")]
        return ids[best], scores[best].astype(np.float32, copy=False)
