"""Fisher diagonal, the Fisher-masked fast-weight mode, and 4-bit deltas of the fast weights."""

from __future__ import annotations

import math

import pytest
import torch

from memsdk.engine import (
    ByteLM,
    ModelConfig,
    TTTConfig,
    TTTState,
    bits_per_byte,
    load_model,
    make_delta,
    merge_delta,
    read_delta,
    restore_state,
    stream,
)
from memsdk.engine.fisher import top_fraction
from memsdk.errors import ConfigError, FormatError, InputError

TEXT = b"".join(
    b"2024-05-%02d kernel: eth%d link up at %d Mbps, id %05d\n" % (i % 28 + 1, i % 3, 10 * i, i)
    for i in range(120)
)


@pytest.fixture(scope="module")
def model() -> ByteLM:
    return load_model("default")[0]


def _adapted(model: ByteLM, config: TTTConfig | None = None) -> TTTState:
    state = TTTState(model, config)
    stream(state, TEXT[:4000])
    return state


def test_fisher_is_the_mean_squared_gradient(model: ByteLM) -> None:
    state = _adapted(model)
    fisher = state.fisher.mean()
    assert state.fisher.count == state.steps > 0
    assert set(fisher) == set(state.fast_weights)
    assert all(bool((f >= 0).all()) and float(f.sum()) > 0 for f in fisher.values())


def test_top_fraction_keeps_each_tensors_largest() -> None:
    scores = {"a": torch.arange(100.0), "b": torch.tensor([3.0, 1.0, 2.0])}
    masks = top_fraction(scores, 0.1)
    assert masks["a"].nonzero().reshape(-1).tolist() == list(range(90, 100))
    assert masks["b"].tolist() == [True, False, False]  # at least one entry per tensor
    with pytest.raises(ValueError, match="fraction must be in"):
        top_fraction(scores, 0.0)


def test_fisher_masked_moves_only_the_masked_fraction(model: ByteLM) -> None:
    config = TTTConfig(fast_params="fisher_masked", mask_fraction=0.01, mask_refresh=1000)
    state = _adapted(model, config)
    initial = state.initial_weights()
    assert set(state.fast_weights) == set(initial) > set(model.initial_fast_weights())
    for name, weight in state.fast_weights.items():
        # One mask for the whole stream (refresh > steps): at most 1% of entries, rounded up.
        moved = int((weight != initial[name]).sum())
        assert moved <= math.ceil(0.01 * weight.numel()), name
    assert state.drift() > 0
    # The inner steps help: later text costs fewer bits than under the initial weights.
    fresh = TTTState(model, config)
    assert bits_per_byte(state, TEXT[4000:6000]) < bits_per_byte(fresh, TEXT[4000:6000])


def test_config_rejects_unknown_modes() -> None:
    with pytest.raises(ConfigError, match="fast_params must be one of"):
        TTTConfig(fast_params="everything")
    with pytest.raises(ConfigError, match="mask_fraction must be in"):
        TTTConfig(mask_fraction=0)


@pytest.mark.parametrize("fast_params", ["dynamic_mlp", "fisher_masked"])
def test_delta_round_trip_restores_the_stream(model: ByteLM, fast_params: str) -> None:
    state = _adapted(model, TTTConfig(fast_params=fast_params))
    state.extra["through_chunk_id"] = "17"
    data = make_delta(state, state.initial_weights(), labels={"version": "3"})
    delta = read_delta(data)
    assert delta.labels == {"version": "3"} and delta.extra == {"through_chunk_id": "17"}
    restored = restore_state(model, [delta])
    assert (restored.position, restored.steps, restored.pending) == (
        state.position,
        state.steps,
        state.pending,
    )
    for name, weight in state.fast_weights.items():
        change = weight - state.initial_weights()[name]
        error = restored.fast_weights[name] - weight
        if float(change.abs().max()) > 0:  # 4-bit: within half a step of each group's scale
            assert float(error.abs().max()) <= float(change.abs().max()) / 14 + 1e-6
    # Quality is kept: the next text costs about the same bits under the restored weights.
    later = TEXT[4000:6000]
    assert bits_per_byte(restored, later) == pytest.approx(bits_per_byte(state, later), abs=0.02)
    # The window cache is rebuilt, so streaming continues with context.
    assert [k.shape for k, _ in restored.caches] == [k.shape for k, _ in state.caches]


def test_fisher_kept_fraction_shrinks_the_file(model: ByteLM) -> None:
    state = _adapted(model)
    full = make_delta(state, state.initial_weights())
    sparse = make_delta(state, state.initial_weights(), keep=0.05)
    assert len(sparse) < len(full) / 3
    delta = read_delta(sparse)
    total = sum(w.numel() for w in state.fast_weights.values())
    assert delta.kept <= 0.05 * total + len(state.fast_weights)
    # Ranked by F * delta^2: the kept 5% carry most of the change the Fisher weighs.
    restored = restore_state(model, [delta])
    later = TEXT[4000:6000]
    initial = TTTState(model)
    assert bits_per_byte(restored, later) < bits_per_byte(initial, later)


def test_chain_of_deltas_merges_in_order(model: ByteLM) -> None:
    state = TTTState(model)
    stream(state, TEXT[:2000])
    first = make_delta(state, state.initial_weights())
    base = {n: w.clone() for n, w in restore_state(model, [read_delta(first)]).fast_weights.items()}
    stream(state, TEXT[2000:4000])
    second = make_delta(state, base)
    restored = restore_state(model, [read_delta(first), read_delta(second)])
    assert restored.position == state.position
    later = TEXT[4000:6000]
    assert bits_per_byte(restored, later) == pytest.approx(bits_per_byte(state, later), abs=0.02)


def test_deltas_refuse_another_base_model(model: ByteLM) -> None:
    data = make_delta(_adapted(model), TTTState(model).initial_weights())
    other = ByteLM(ModelConfig.small())
    state = TTTState(other)
    with pytest.raises(FormatError, match=r"was made for base model .* merge it into the model"):
        merge_delta(state.fast_weights, read_delta(data), model=state.model_fingerprint)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],
        lambda d: b"\x00" * 8 + d[8:],
        lambda d: d.replace(b"memsdk.weight_delta/1", b"memsdk.weight_delta/9"),
        lambda d: d.replace(b'"kept"', b'"kapt"'),
    ],
)
def test_damaged_delta_files_are_clear_errors(model: ByteLM, damage) -> None:
    data = make_delta(_adapted(model), TTTState(model).initial_weights(), keep=0.5)
    with pytest.raises(FormatError, match="delta"):
        read_delta(damage(data))


def test_bad_arguments(model: ByteLM) -> None:
    state = TTTState(model)
    with pytest.raises(InputError, match="keep must be in"):
        make_delta(state, state.initial_weights(), keep=1.5)
    with pytest.raises(InputError, match="base has tensors"):
        make_delta(state, {})
    with pytest.raises(InputError, match="at least one delta"):
        restore_state(model, [])
