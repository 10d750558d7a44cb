"""The TTT-Linear sequence mixer in the engine: configs that keep shipped fingerprints, streaming
that equals one pass, the prequential contract, state files, and training with the outer loop."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from memsdk.engine import ByteLM, ModelConfig, TTTConfig, TTTState, load_model, stream
from memsdk.engine import train as train_module
from memsdk.engine.checkpoint import model_path
from memsdk.engine.corpus import build_corpus
from memsdk.engine.train import meta_loss, plain_loss
from memsdk.engine.ttt import fingerprint
from memsdk.errors import ConfigError, FormatError

TEXT = (
    b"081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    b"blk_38865049064139660 terminating\n"
    b"081109 203807 222 INFO dfs.DataNode$PacketResponder: PacketResponder 0 for block "
    b"blk_-6952295868487656571 terminating\n"
) * 3

# Computed before the mixer option existed: the config text and the fingerprint of every
# shipped model, and the JSON of each preset, must not move.
SHIPPED_FINGERPRINTS = {"default": "62be17de86457774", "small-plain": "a5f73e4961b638ed"}
PRESET_JSON = {
    "tiny": '{"d_model": 64, "dynamic_ratio": 4, "mlp_ratio": 4, "n_head": 2, "n_layer": 4, '
    '"rope_base": 10000.0, "window": 64}',
    "small": '{"d_model": 128, "dynamic_ratio": 2, "mlp_ratio": 3, "n_head": 4, "n_layer": 4, '
    '"rope_base": 10000.0, "window": 256}',
    "base": '{"d_model": 384, "dynamic_ratio": 4, "mlp_ratio": 4, "n_head": 6, "n_layer": 8, '
    '"rope_base": 10000.0, "window": 1024}',
}


@pytest.fixture(scope="module")
def model() -> ByteLM:
    """A tiny TTT-Linear model with random weights and a non-zero dynamic branch."""
    torch.manual_seed(0)
    model = ByteLM(ModelConfig.tiny_ttt_linear())
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W0.normal_(0, 0.1)
            if block.dynamic:
                block.down0.normal_(0, 0.05)
    return model.eval().requires_grad_(False)


def _config(**changes) -> TTTConfig:
    return dataclasses.replace(TTTConfig(chunk_bytes=40, inner_lr=0.5), **changes)


@pytest.mark.parametrize("name", sorted(SHIPPED_FINGERPRINTS))
def test_shipped_models_keep_their_config_text_and_fingerprint(name):
    model, metadata, _ = load_model(name)
    assert model.config.mixer == "swa"
    assert fingerprint(model) == SHIPPED_FINGERPRINTS[name]
    stored = json.loads((model_path(name) / "index.json").read_text())["metadata"]["config"]
    assert json.loads(model.config.to_json()) == stored == metadata["config"]


def test_new_fields_are_written_only_away_from_their_defaults():
    for name, text in PRESET_JSON.items():
        config = ModelConfig.preset(name)
        assert config.to_json() == text
        assert ModelConfig.from_json(text) == config
    ttt = ModelConfig.preset("tiny_ttt_linear")
    assert json.loads(ttt.to_json())["mixer"] == "ttt_linear"
    assert "ttt_mini_batch" not in json.loads(ttt.to_json())
    assert ModelConfig.from_json(ttt.to_json()) == ttt
    odd = dataclasses.replace(ttt, ttt_mini_batch=8)
    assert ModelConfig.from_json(odd.to_json()) == odd
    with pytest.raises(ConfigError, match="mixer must be one of"):
        ModelConfig(mixer="mamba")
    with pytest.raises(ConfigError, match="ttt_mini_batch must be between 1 and 64, got 0"):
        ModelConfig(mixer="ttt_linear", ttt_mini_batch=0)
    with pytest.raises(ConfigError, match="heads of at most 128 channels"):
        ModelConfig(mixer="ttt_linear", d_model=512, n_head=2)
    assert ModelConfig(mixer="ttt_linear", d_model=30, n_head=10).head_dim == 3  # no rotary


def test_every_block_mixes_with_ttt_linear(model):
    assert all(type(block.attn).__name__ == "TTTLinear" for block in model.blocks)
    names = dict(model.named_parameters())
    assert {"blocks.0.attn.W0", "blocks.0.attn.eta.weight", "blocks.0.attn.ln_weight"} <= set(names)
    assert "blocks.3.attn.W0" in model.suffix_parameters()


def test_streaming_chunk_by_chunk_equals_one_forward(model):
    """Cuts inside mini-batches, of one byte and longer than several: the caches carry the
    inner state and the unfinished mini-batch, so the logits are those of one pass."""
    tokens = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))
    full = model(tokens)
    x = model.embed(tokens)
    cfg = model.config
    prefix, suffix = [None] * cfg.first_dynamic, [None] * cfg.n_dynamic
    pieces = []
    for start, stop in [(0, 7), (7, 27), (27, 60), (60, 61), (61, 64), (64, 150)]:
        hidden, prefix = model.prefix(x[:, start:stop], prefix)
        logits, suffix = model.suffix(hidden, suffix, model.initial_fast_weights())
        pieces.append(logits)
        state, pending = suffix[-1]
        assert state.shape == (2, cfg.n_head, cfg.head_dim + 1, cfg.head_dim)
        assert pending.shape == (2, stop % cfg.ttt_mini_batch, cfg.d_model)
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_meta_loss_without_inner_steps_is_the_plain_loss():
    """The outer loop's chunked suffix (chunks of 20 bytes: not a multiple of the mini-batch)
    reproduces the plain forward, and its gradient reaches W0, eta and the initial fast
    weights."""
    torch.manual_seed(0)
    model = ByteLM(ModelConfig.tiny_ttt_linear())
    tokens = torch.randint(0, 256, (2, 3 * 20 + 1))
    frozen = meta_loss(model, tokens, 20, TTTConfig(chunk_bytes=20, inner_lr=0.0))
    assert torch.allclose(frozen, plain_loss(model, tokens), atol=1e-5)
    meta_loss(model, tokens, 20, TTTConfig(chunk_bytes=20, inner_lr=0.5)).backward()
    for parameter in (model.blocks[-1].attn.W0, model.blocks[0].attn.eta.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert model.blocks[-1].up0.grad.abs().sum() > 0


def test_perturbing_a_byte_leaves_every_earlier_loss_bit_identical(model):
    t = 97  # the third chunk, inside a mini-batch
    perturbed = bytearray(TEXT)
    perturbed[t] ^= 0x5A
    a = stream(TTTState(model, _config()), TEXT, final=True, record_bytes=True)
    b = stream(TTTState(model, _config()), bytes(perturbed), final=True, record_bytes=True)
    assert a.steps == b.steps > 2
    assert torch.equal(a.byte_bits[:t], b.byte_bits[:t])
    assert a.byte_bits[t] != b.byte_bits[t]
    assert not torch.equal(a.byte_bits[t + 1 :], b.byte_bits[t + 1 :])


def test_states_save_load_and_continue_exactly(model, tmp_path):
    fresh = TTTState(model, _config())
    assert fresh.caches == [None] * model.config.n_layer
    assert TTTState.from_bytes(fresh.to_bytes(), model).caches == fresh.caches
    state = TTTState(model, _config())
    stream(state, TEXT[:150])  # 3 chunks of 40: 120 bytes, 8 of them in an unfinished mini-batch
    path = tmp_path / "state.safetensors"
    state.save(path)
    loaded = TTTState.load(path, model)
    for (s1, p1), (s2, p2) in zip(state.caches, loaded.caches, strict=True):
        assert torch.equal(s1, s2) and torch.equal(p1, p2) and p1.shape[1] == 120 % 16
    a = stream(state, TEXT[150:], record_bytes=True)
    b = stream(loaded, TEXT[150:], record_bytes=True)
    assert torch.equal(a.byte_bits, b.byte_bits)


def test_a_damaged_ttt_linear_state_is_refused(model):
    from safetensors.torch import load, save

    from memsdk.engine.ttt import _safetensors_metadata

    state = TTTState(model, _config())
    stream(state, TEXT[:80])
    data = state.to_bytes()
    tensors = load(data)
    tensors["cache.1.state"] = tensors["cache.1.state"][:, :, :-1].contiguous()
    forged = save(tensors, metadata=_safetensors_metadata(data))
    with pytest.raises(FormatError, match=r"damaged: cache 1 has shape \(1, 2, 32, 32\)"):
        TTTState.from_bytes(forged, model)
    tensors = load(data)
    tensors["cache.2.pending"] = torch.zeros(1, 16, 64)  # a whole mini-batch never waits
    forged = save(tensors, metadata=_safetensors_metadata(data))
    with pytest.raises(FormatError, match=r"cache 2 holds pending inputs of shape \(1, 16, 64\)"):
        TTTState.from_bytes(forged, model)


@pytest.mark.slow
def test_a_tiny_ttt_linear_model_trains_with_the_outer_loop(tmp_path, shared, capsys, monkeypatch):
    corpus = tmp_path / "corpus"
    build_corpus(corpus, shared=shared(), max_source_bytes=48 * 1024)
    monkeypatch.setattr(train_module, "DEV_EVAL_BYTES", 4096)  # the dev stream runs on CPU
    out = tmp_path / "run"
    common = ["--corpus", str(corpus), "--log-every", "1", "--threads", "1"]
    fit = ["fit", "--out", str(out), "--preset", "tiny_ttt_linear", "--batch", "4", *common]
    assert train_module.main([*fit, "--seq-bytes", "64", "--steps", "40", "--warmup", "5"]) == 0
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    losses = [r["train_bpb"] for r in logs if "train_bpb" in r]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    trained, *_ = load_model(out)
    assert trained.config == ModelConfig.tiny_ttt_linear()
    assert trained.card["history"][-1]["dev_bpb_ttt"] < 8.0
    meta = tmp_path / "meta"
    args = ["fit", "--out", str(meta), "--init", str(out), "--mode", "meta", "--steps", "1"]
    chunks = ["--chunks", "2", "--chunk-bytes", "24", "--batch", "2"]
    assert train_module.main([*args, *chunks, *common]) == 0
    assert load_model(meta)[0].card["mode"] == "meta"
