"""The weight-memory engine: the streaming contract, state files, recall and the outer loop."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memsdk.engine import (
    ByteLM,
    ModelConfig,
    TTTConfig,
    TTTState,
    bits_per_byte,
    byte_losses,
    generate,
    score_bytes,
    stream,
)
from memsdk.engine.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from memsdk.engine.train import meta_loss, plain_loss
from memsdk.errors import ConfigError, FormatError, InputError, ModelNotFoundError

TEXT = (
    b"081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    b"blk_38865049064139660 terminating\n"
    b"081109 203807 222 INFO dfs.DataNode$PacketResponder: PacketResponder 0 for block "
    b"blk_-6952295868487656571 terminating\n"
) * 6


@pytest.fixture(scope="module")
def model() -> ByteLM:
    """A tiny model with random (not trained) weights: big enough that every path matters."""
    torch.manual_seed(0)
    model = ByteLM(ModelConfig.tiny())
    with torch.no_grad():
        for block in model.blocks:
            if block.dynamic:
                block.down0.normal_(0, 0.05)
    return model.eval().requires_grad_(False)


def _same_state(a: TTTState, b: TTTState) -> bool:
    """Equal tensors and counters (safetensors does not promise a byte-stable header order)."""
    from safetensors.torch import load

    ta, tb = load(a.to_bytes()), load(b.to_bytes())
    return (
        ta.keys() == tb.keys()
        and all(torch.equal(ta[k], tb[k]) for k in ta)
        and (a.position, a.steps, a.rejected_steps, a.last_byte, a.config)
        == (b.position, b.steps, b.rejected_steps, b.last_byte, b.config)
    )


def _state_numel(state: TTTState) -> int:
    from safetensors.torch import load

    # The partial-chunk buffer is bounded by chunk_bytes; everything else must not grow at all.
    return sum(t.numel() for k, t in load(state.to_bytes()).items() if k != "pending")


class _OpLog(TorchDispatchMode):
    """Records every tensor op with its input shapes: equal logs mean equal work."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        self.ops.append((str(func), shapes))
        return func(*args, **(kwargs or {}))


def _config(**changes) -> TTTConfig:
    return dataclasses.replace(TTTConfig(chunk_bytes=40, inner_lr=0.5), **changes)


def test_presets_and_sizes():
    assert ModelConfig.tiny().n_dynamic == 1
    assert ByteLM(ModelConfig.tiny()).num_parameters() < 1_000_000
    base = ModelConfig.base()
    assert (base.n_dynamic, base.first_dynamic) == (2, 6)
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="even"):
        ModelConfig(d_model=30, n_head=10)


def test_perturbing_a_byte_leaves_every_earlier_loss_bit_identical(model):
    t = 97  # inside the third chunk, so two inner steps happened before it
    perturbed = bytearray(TEXT)
    perturbed[t] ^= 0x5A
    a = stream(TTTState(model, _config()), TEXT, final=True, record_bytes=True)
    b = stream(TTTState(model, _config()), bytes(perturbed), final=True, record_bytes=True)
    assert a.steps == b.steps == math.ceil(len(TEXT) / 40)
    assert torch.equal(a.byte_bits[:t], b.byte_bits[:t])
    assert a.byte_bits[t] != b.byte_bits[t]  # byte t is the target there
    assert not torch.equal(a.byte_bits[t + 1 :], b.byte_bits[t + 1 :])


def test_ttt_learns_a_repeating_stream(model):
    """Chunks seen before get cheaper under TTT; with inner_lr=0 (frozen) they do not."""
    pattern = bytes(
        torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    )
    data = pattern * 30
    ttt = stream(TTTState(model, _config(inner_lr=1.0)), data)
    frozen = stream(TTTState(model, _config(inner_lr=0.0)), data)
    assert frozen.steps == 0 and ttt.steps == 30
    assert ttt.chunk_bits_per_byte[-1] < frozen.chunk_bits_per_byte[-1] - 1.0
    assert ttt.bits_per_byte < frozen.bits_per_byte


def test_partial_chunks_wait_in_the_buffer(model):
    state = TTTState(model, _config())
    report = stream(state, TEXT[:100])
    assert (report.bytes_scored, report.pending_bytes, state.pending) == (80, 20, TEXT[80:100])
    report = stream(state, TEXT[100:130], final=True)
    assert (report.bytes_scored, report.chunks, state.pending) == (50, 2, b"")
    assert state.position == 130 and state.steps == 4
    whole = stream(TTTState(model, _config()), TEXT[:130], final=True, record_bytes=True)
    assert whole.chunks == 4  # 40, 40, 40, 10: the same cuts as above
    with pytest.raises(InputError, match="data must be bytes or str, got int"):
        stream(state, 5)


def test_reset_state_equals_the_initial_one(model):
    fresh = TTTState(model, _config())
    state = TTTState(model, _config())
    stream(state, TEXT[:150])
    assert state.drift() > 0 and state.steps == 3
    state.reset()
    assert state.drift() == 0 and (state.position, state.steps, state.pending) == (0, 0, b"")
    assert _same_state(fresh, state)
    for name, weight in model.initial_fast_weights().items():
        assert torch.equal(state.fast_weights[name], weight)


def test_save_and_load_round_trip_exactly(model, tmp_path):
    state = TTTState(model, _config(decay=0.01))
    stream(state, TEXT[:150])
    state.extra["through_chunk_id"] = "42"
    path = tmp_path / "state.safetensors"
    state.save(path)
    loaded = TTTState.load(path, model)
    assert _same_state(loaded, state) and loaded.extra == {"through_chunk_id": "42"}
    assert (loaded.position, loaded.steps, loaded.pending, loaded.config) == (
        state.position,
        state.steps,
        state.pending,
        state.config,
    )
    a = stream(state, TEXT[150:300], record_bytes=True)
    b = stream(loaded, TEXT[150:300], record_bytes=True)
    assert torch.equal(a.byte_bits, b.byte_bits)
    for name in state.fast_weights:
        assert torch.equal(state.fast_weights[name], loaded.fast_weights[name])


def test_damaged_or_foreign_state_files_are_refused(model, tmp_path):
    data = TTTState(model, _config()).to_bytes()
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        TTTState.from_bytes(data[: len(data) // 2], model)
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        TTTState.from_bytes(b"\x00" * 3, model)
    other = ByteLM(ModelConfig.tiny())
    with pytest.raises(FormatError, match=r"was saved for model \w+, this engine runs model"):
        TTTState.from_bytes(data, other)


def test_a_non_finite_loss_rejects_the_step_and_keeps_the_state(model):
    broken = ByteLM(ModelConfig.tiny())
    broken.load_state_dict(model.state_dict())
    broken.requires_grad_(False)
    with torch.no_grad():
        broken.head.weight[3, 0] = float("inf")  # logits become inf/nan
    state = TTTState(broken, _config())
    before = {n: w.clone() for n, w in state.fast_weights.items()}
    report = stream(state, TEXT[:120])
    assert (report.steps, report.rejected_steps, state.rejected_steps) == (0, 3, 3)
    assert state.position == 120
    for name, weight in before.items():
        assert torch.equal(state.fast_weights[name], weight)


def test_stream_cost_per_byte_does_not_grow_with_position(model):
    """FLOPs of one chunk are the same at any position past the first window, and the state
    keeps a fixed size however long the stream."""
    state = TTTState(model, _config(chunk_bytes=32))
    window = model.config.window

    def chunk_ops() -> list[tuple]:
        log = _OpLog()
        with log:
            stream(state, TEXT[:32])
        return log.ops

    stream(state, TEXT * 1)  # past the first window
    early, size_early = chunk_ops(), _state_numel(state)
    for _ in range(8):
        stream(state, TEXT)
    late, size_late = chunk_ops(), _state_numel(state)
    assert state.position > 8 * window
    assert any("mm" in op for op, _ in early)
    assert early == late  # the same ops on the same shapes: the same cost
    assert size_early == size_late


def test_scoring_and_generation_do_not_change_the_state(model):
    state = TTTState(model, _config())
    stream(state, TEXT[:160])
    snapshot = TTTState.from_bytes(state.to_bytes(), model)
    losses = byte_losses(state, TEXT[:50])
    assert losses.shape == (50,) and torch.isfinite(losses).all()
    assert bits_per_byte(state, TEXT[:50]) == pytest.approx(float(losses.mean()))
    with_context = byte_losses(state, TEXT[10:50], context=TEXT[:10])
    assert torch.allclose(with_context, losses[10:], atol=1e-5)
    out = generate(state, b"081109 ", 20)
    assert len(out) == 20 and generate(state, b"081109 ", 20) == out  # greedy: deterministic
    sampled = generate(state, "081109 ", 20, temperature=1.0, seed=3)
    assert sampled == generate(state, "081109 ", 20, temperature=1.0, seed=3)
    stopped = generate(state, b"x", 50, stop=out[:1])
    assert stopped.endswith(out[:1]) and len(stopped) <= 50
    assert _same_state(state, snapshot)
    with pytest.raises(InputError, match="data is empty"):
        bits_per_byte(state, b"")
    with pytest.raises(InputError, match="max_bytes must be >= 0"):
        generate(state, b"x", -1)


def test_states_are_independent(model):
    a, b = TTTState(model, _config()), TTTState(model, _config())
    stream(a, TEXT[:120])
    assert b.drift() == 0 and b.position == 0
    for name, weight in a.fast_weights.items():
        assert weight.data_ptr() != b.fast_weights[name].data_ptr()


def test_meta_loss_matches_plain_loss_without_an_inner_step_and_trains_the_init():
    torch.manual_seed(0)
    model = ByteLM(ModelConfig.tiny())
    tokens = torch.randint(0, 256, (2, 4 * 16 + 1))
    frozen = meta_loss(model, tokens, 16, TTTConfig(chunk_bytes=16, inner_lr=0.0))
    assert torch.allclose(frozen, plain_loss(model, tokens), atol=1e-5)
    loss = meta_loss(model, tokens, 16, TTTConfig(chunk_bytes=16, inner_lr=0.5))
    loss.backward()
    up0 = model.blocks[-1].up0.grad
    assert up0 is not None and torch.isfinite(up0).all() and up0.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_checkpoints_are_sharded_and_checked(tmp_path):
    tensors = {f"w{i}": torch.full((64, 64), float(i)) for i in range(5)}  # 16 KiB each
    save_checkpoint(tmp_path / "ckpt", tensors, {"note": "x"}, max_shard_bytes=40_000)
    shards = sorted(p.name for p in (tmp_path / "ckpt").glob("shard-*.safetensors"))
    assert len(shards) == 3
    loaded, metadata = load_checkpoint(tmp_path / "ckpt")
    assert metadata == {"note": "x"}
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    shard = tmp_path / "ckpt" / shards[1]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(FormatError, match="does not match its SHA-256"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ModelNotFoundError, match="no model 'nope'"):
        load_model("nope")


def test_a_saved_model_loads_frozen_with_its_inner_loop_settings(tmp_path, model):
    ttt = TTTConfig(chunk_bytes=64, inner_lr=0.3)
    save_model(model, tmp_path / "m", card={"steps": 7}, ttt=ttt)
    loaded, _metadata, extra = load_model(tmp_path / "m")
    assert loaded.default_ttt == ttt and loaded.card == {"steps": 7} and extra == {}
    assert not any(p.requires_grad for p in loaded.parameters())
    assert TTTState(loaded).config == ttt
    assert TTTState(loaded).model_fingerprint == TTTState(model).model_fingerprint


@pytest.mark.parametrize("past", [0, 3, 8])
@pytest.mark.parametrize("length", [8, 13, 16, 63])
def test_blocked_sliding_window_attention_matches_the_dense_masked_form(past, length):
    from memsdk.engine.model import _blocked_attention, _window_mask

    window = 8
    g = torch.Generator().manual_seed(past * 100 + length)
    q = torch.randn(2, 3, length, 6, generator=g)
    k, v = (torch.randn(2, 3, past + length, 6, generator=g) for _ in range(2))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=_window_mask(length, past + length, window, q.device)
    )
    blocked = _blocked_attention(q, k, v, past, window)
    assert blocked.shape == dense.shape
    assert torch.allclose(blocked, dense, atol=1e-5)


# ---- copying from the window (the match model) --------------------------------------------------


def test_match_finds_the_longest_recent_repeat():
    from memsdk.engine.copy import match

    text = b"host db-17 backup at 02:10 UTC\nhost db-17 backup at 0"
    t = len(text)
    assert match(text, t) == (ord("2"), 16)  # a 22-byte repeat: 16 is the longest length tried
    assert match(b"abcdefgh only once", 18) is None
    assert match(b"short", 3) is None


def test_the_copy_mixture_is_a_distribution_and_leaves_unmatched_positions_alone():
    from memsdk.engine.copy import mix_copy

    gen = torch.Generator().manual_seed(0)
    text = b"0123456789abcdef-0123456789abcdef"
    logits = torch.randn(len(text), 256, generator=gen)
    out = mix_copy(logits, text, 0)
    assert torch.allclose(out.logsumexp(-1), torch.zeros(len(text)), atol=1e-5)
    assert torch.allclose(out[:17], logits[:17].log_softmax(-1))  # no repeat there yet
    assert int(out[-1].argmax()) == ord("f")  # 16 bytes repeat: the copy dominates


def test_a_line_in_the_window_is_copied_exactly_only_with_copy():
    state = TTTState(load_model()[0])  # the shipped model: it does not copy on its own
    line = b"FACT ref-3fa9c1: the backup window of db-17 is 02:10 UTC every Sunday\n"
    query = b"FACT ref-3fa9c1: the backup window of db-17 is"
    answer = line[len(query) :]
    plain_bits, _ = score_bytes(state, answer, context=line + query)
    copy_bits, greedy = score_bytes(state, answer, context=line + query, copy=True)
    assert float(copy_bits.mean()) < 0.5 < float(plain_bits.mean())
    assert bool(greedy.all())
    assert generate(state, line + query, 40, stop=b"\n", copy=True) == answer


@pytest.mark.gpu
def test_streaming_on_cuda_matches_the_cpu_engine() -> None:
    """The engine on CUDA (Triton attention, dynamic MLP and inner step) learns what the CPU
    engine learns, and its states and deltas move between the two."""
    from memsdk.engine import make_delta, read_delta, restore_state

    cpu_model = load_model()[0]
    cuda_model = load_model()[0].cuda()
    data = TEXT * 4
    on_cpu, on_cuda = TTTState(cpu_model), TTTState(cuda_model)
    cpu_report = stream(on_cpu, data, final=True)
    cuda_report = stream(on_cuda, data, final=True)
    assert on_cuda.steps == on_cpu.steps > 0
    assert cuda_report.bits_per_byte == pytest.approx(cpu_report.bits_per_byte, rel=1e-3)
    probe = TEXT[:200]
    assert bits_per_byte(on_cuda, probe) == pytest.approx(bits_per_byte(on_cpu, probe), rel=1e-3)
    assert generate(on_cuda, TEXT[:40], 30) == generate(on_cpu, TEXT[:40], 30)
    reread = TTTState.from_bytes(on_cuda.to_bytes(), cpu_model)
    assert bits_per_byte(reread, probe) == pytest.approx(bits_per_byte(on_cuda, probe), rel=1e-3)
    delta = read_delta(make_delta(on_cuda, on_cuda.initial_weights()))
    restored = restore_state(cuda_model, [delta])
    assert bits_per_byte(restored, probe) == pytest.approx(bits_per_byte(on_cuda, probe), abs=0.02)
