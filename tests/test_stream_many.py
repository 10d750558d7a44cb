"""stream_many: many streams' chunks as one batch leave every state where stream() would."""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

import memsdk.engine.ttt as ttt
from memsdk.engine import ByteLM, ModelConfig, TTTState, load_model, stream, stream_many
from memsdk.errors import InputError
from memsdk.kernels.dispatch import relative_rms

# float32 sums in another order (a batched matrix product against one per stream), carried
# through a few inner steps.
ATOL, RTOL = 2e-5, 1e-4


def _text(module: str, start: int, size: int) -> bytes:
    """Real text every machine has: a standard-library module's source (a GPU machine has no
    ../shared)."""
    data = Path(sysconfig.get_paths()["stdlib"], *module.split(".")).with_suffix(".py").read_bytes()
    assert len(data) >= start + size, module
    return data[start : start + size]


@pytest.fixture(scope="module")
def model() -> ByteLM:
    return load_model("default")[0]


def _copy(state: TTTState) -> TTTState:
    return TTTState.from_bytes(state.to_bytes(), state.model)


def _assert_same(batched: TTTState, serial: TTTState) -> None:
    a, b = load(batched.to_bytes()), load(serial.to_bytes())
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=ATOL, rtol=RTOL, msg=name)
    assert (batched.position, batched.last_byte, batched.pending, batched.recent_inputs) == (
        serial.position,
        serial.last_byte,
        serial.pending,
        serial.recent_inputs,
    )
    assert (batched.steps, batched.rejected_steps) == (serial.steps, serial.rejected_steps)
    assert batched.fisher.count == serial.fisher.count
    for name, total in serial.fisher.sums.items():
        torch.testing.assert_close(batched.fisher.sums[name], total, atol=ATOL, rtol=RTOL)


def _assert_same_report(batched: ttt.StreamReport, serial: ttt.StreamReport) -> None:
    assert (batched.bytes_scored, batched.chunks, batched.steps, batched.rejected_steps) == (
        serial.bytes_scored,
        serial.chunks,
        serial.steps,
        serial.rejected_steps,
    )
    assert batched.pending_bytes == serial.pending_bytes
    assert batched.chunk_bits_per_byte == pytest.approx(serial.chunk_bits_per_byte, rel=RTOL)
    torch.testing.assert_close(batched.byte_bits, serial.byte_bits, atol=1e-4, rtol=RTOL)


def test_many_real_streams_end_where_each_alone_would(model: ByteLM, batch_sizes: list[int]):
    """Real streams (Python sources) of other lengths, mid-stream states with a partial chunk,
    another slot, other settings (decay, frozen, Fisher-masked) and an empty stream, in one
    call: every state, report and Fisher sum matches streaming each state alone."""
    decay = dataclasses.replace(model.default_ttt, decay=0.01)
    frozen = dataclasses.replace(model.default_ttt, inner_lr=0.0)
    masked = dataclasses.replace(model.default_ttt, fast_params="fisher_masked", inner_lr=0.03)
    plan = [  # (config, bytes streamed before, data, slot)
        (None, b"", _text("argparse", 0, 3000), 0),
        (None, b"", _text("textwrap", 0, 2600), 0),
        (None, _text("heapq", 0, 700), _text("heapq", 700, 2900), 0),  # 188 bytes pending
        (None, _text("json.decoder", 0, 1024), _text("json.decoder", 1024, 1500), 1),  # slot 1
        (decay, b"", _text("difflib", 0, 2100), 0),
        (decay, b"", _text("shlex", 0, 2048), 0),
        (frozen, b"", _text("tokenize", 0, 1600), 0),
        (frozen, b"", _text("calendar", 0, 1700), 0),
        (masked, b"", _text("fractions", 0, 1800), 0),
        (None, _text("ipaddress", 0, 512), b"", 0),  # nothing new
    ]
    states = []
    for config, before, _, slot in plan:
        state = TTTState(model, config)
        if slot:
            assert state.add_slot() == slot
        stream(state, before, slot=slot)
        states.append(state)
    states = [_copy(state) for state in states]  # as the copies below: no Fisher sums yet
    serial = [_copy(state) for state in states]

    reports = stream_many(
        states,
        [data for _, _, data, _ in plan],
        final=True,
        record_bytes=True,
        slots=[slot for *_, slot in plan],
    )

    assert max(batch_sizes) >= 4  # the default streams ran as one batch
    for (_, _, data, slot), state, alone, report in zip(plan, states, serial, reports, strict=True):
        expected = stream(alone, data, final=True, record_bytes=True, slot=slot)
        _assert_same_report(report, expected)
        _assert_same(state, alone)
    assert all(
        state.steps
        for state, (config, *_) in zip(states, plan, strict=True)
        if config is not frozen
    )


def test_a_streams_bad_step_is_rejected_alone(model: ByteLM, batch_sizes: list[int]):
    """Fast weights that make one stream's loss infinite reject that stream's steps only; the
    others in its batch step as they would alone."""
    data = [_text(module, 0, 2048) for module in ("argparse", "textwrap", "pprint")]
    states = [TTTState(model) for _ in data]
    poisoned = states[1]
    name = next(iter(poisoned.fast_weights))
    poisoned.set_slot_weights(0, {name: torch.full_like(poisoned.fast_weights[name], 1e38)})
    serial = [_copy(state) for state in states]

    reports = stream_many(states, data)

    assert batch_sizes == [3, 3, 3, 3]
    assert (reports[1].steps, reports[1].rejected_steps) == (0, 4)
    assert torch.equal(poisoned.fast_weights[name], serial[1].fast_weights[name])
    for state, alone, item in zip(states, serial, data, strict=True):
        stream(alone, item)
        _assert_same(state, alone)
    assert [r.steps for r in reports] == [4, 0, 4]


def test_ttt_linear_mixer_batches_too(batch_sizes: list[int]):
    """The TTT-Linear mixer's caches (its inner state and pending inputs) batch as well."""
    torch.manual_seed(0)
    model = ByteLM(ModelConfig.tiny_ttt_linear()).eval().requires_grad_(False)
    with torch.no_grad():
        for block in model.blocks:
            if block.dynamic:
                block.down0.normal_(0, 0.05)
    data = [
        _text(module, 0, 900 + 37 * i)
        for i, module in enumerate(("argparse", "textwrap", "string"))
    ]
    states = [TTTState(model) for _ in data]
    serial = [_copy(state) for state in states]

    stream_many(states, data, final=True)

    assert batch_sizes and max(batch_sizes) == 3
    for state, alone, item in zip(states, serial, data, strict=True):
        stream(alone, item, final=True)
        _assert_same(state, alone)


def test_bad_calls_change_nothing(model: ByteLM):
    states = [TTTState(model), TTTState(model)]
    stream(states[0], _text("argparse", 0, 700))
    before = [_copy(state) for state in states]
    with pytest.raises(InputError, match="one data item and one slot per state: got 2 states"):
        stream_many(states, [b"abc"])
    with pytest.raises(InputError, match="appears twice"):
        stream_many([states[0], states[0]], [b"a", b"b"])
    with pytest.raises(InputError, match="data must be bytes or str, got int"):
        stream_many(states, [b"abc" * 400, 5])
    with pytest.raises(InputError, match="no fast-weight slot 3"):
        stream_many(states, [b"abc" * 400, b"def"], slots=[0, 3])
    for state, copy in zip(states, before, strict=True):
        a, b = load(state.to_bytes()), load(copy.to_bytes())
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (state.pending, state.position, state.steps) == (
            copy.pending,
            copy.position,
            copy.steps,
        )


@pytest.mark.gpu
def test_a_batch_on_cuda_learns_what_each_stream_alone_learns(batch_sizes: list[int]) -> None:
    """On CUDA a stream alone runs the Triton path (fused dynamic MLP and inner step) and a
    batch the batched torch one: the same weights within float32 rounding."""
    model = load_model("default")[0].cuda()
    data = [_text(module, 0, 6000) for module in ("argparse", "difflib", "ipaddress", "tokenize")]
    states = [TTTState(model) for _ in data]
    serial = [_copy(state) for state in states]

    reports = stream_many(states, data, final=True)

    assert max(batch_sizes) == len(data)
    for state, alone, item, report in zip(states, serial, data, reports, strict=True):
        expected = stream(alone, item, final=True)
        assert (report.steps, report.rejected_steps) == (expected.steps, 0)
        assert report.bits_per_byte == pytest.approx(expected.bits_per_byte, rel=1e-3)
        for name, weight in alone.fast_weights.items():
            assert relative_rms(state.fast_weights[name], weight) < 1e-3, name
