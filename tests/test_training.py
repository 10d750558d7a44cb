"""The outer loop on a tiny corpus: build, pre-train, resume, meta-learn, tune, export."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from memsdk.engine import load_model
from memsdk.engine.corpus import (
    HELDOUT_SYSTEMS,
    build_corpus,
    copied_share,
    long_lines,
    read_text,
    split_files,
)
from memsdk.engine.train import main as train
from memsdk.engine.train import with_copies


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared):
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, shared=shared(), max_source_bytes=48 * 1024)
    return out


def test_the_split_is_by_whole_files_and_holds_out_three_log_systems(shared):
    split = split_files(shared())
    train = {f.path for f in split.train}
    heldout = {f.path for f in split.heldout}
    assert train and heldout and not train & heldout
    systems = {f.name.split("/")[0] for f in split.heldout if f.source == "loghub"}
    assert systems == set(HELDOUT_SYSTEMS)
    assert not any(f.source == "loghub" and f.name.split("/")[0] in systems for f in split.train)
    assert not any(f.source == "tickets" for f in split.train)
    for source in {f.source for f in split.train}:  # some files of every other source
        assert any(f.source == source for f in split.heldout), source
    assert [f.path for f in split_files(shared()).heldout] == [f.path for f in split.heldout]


def test_no_held_out_content_is_in_training(shared):
    """Held out by content, not by name: Debian ships files twice under two names."""
    split = split_files(shared())
    train = {hashlib.sha256(read_text(f)).digest() for f in split.train}
    copies = [f.name for f in split.heldout if hashlib.sha256(read_text(f)).digest() in train]
    assert copies == []
    dropped = {f.name: why for f, why in split.dropped}
    assert not {f.path for f, _ in split.dropped} & {f.path for f in split.train + split.heldout}
    twin = ("man1/as.1.gz", "man1/x86_64-linux-gnu-as.1.gz")  # byte-identical on Debian
    if all(Path("/usr/share/man", name).exists() for name in twin):
        assert dropped.get("man1/as.1.gz") == "identical to a training file"


def test_a_near_copy_counts_its_telling_lines_not_shared_boilerplate():
    boilerplate = [b'.\\" this preamble line is in every page of the source']
    trained = [b"--zone=ZONE  the zone of the node template, such as us-central1-a"] + [
        b"--flag-%d=VALUE  an option the beta page describes in detail" % i for i in range(9)
    ]
    line_files = Counter()
    line_files.update(hash(line) for line in long_lines(b"\n".join(boilerplate + trained)))
    line_files.update({hash(boilerplate[0]): 9})  # in many training files: boilerplate
    alpha = b"\n".join(boilerplate + trained[:8] + [b"--new-flag  only the alpha page has it ok"])
    assert copied_share(alpha, line_files) == 8 / 9
    fresh = b"\n".join(boilerplate + [b"a line no training file ever held, long enough"] * 3)
    assert copied_share(fresh, line_files) == 0.0
    assert copied_share(b"short\n\n}", line_files) == 0.0


def test_fit_resumes_meta_learns_tunes_and_exports(corpus, shared, tmp_path, capsys):
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["train_bytes"] == (corpus / "train.bin").stat().st_size > 0
    common = ["--corpus", str(corpus), "--batch", "2", "--log-every", "1", "--threads", "1"]
    plain = tmp_path / "plain"
    fit = ["fit", "--out", str(plain), "--preset", "tiny", "--seq-bytes", "64", *common]
    assert train([*fit, "--steps", "2", "--eval-every", "2"]) == 0
    first, *_ = load_model(plain)
    assert first.card["steps"] == 2 and first.card["history"][-1]["step"] == 2
    assert train([*fit, "--steps", "3", "--eval-every", "100"]) == 0  # resumes from step 2
    resumed, _, moments = load_model(plain)
    assert resumed.card["steps"] == 3 and resumed.card["bytes_seen"] == 3 * 2 * 64
    assert any(k.endswith(".exp_avg_sq") for k in moments)  # optimizer state travels along

    meta = tmp_path / "meta"
    assert (
        train(
            [
                "fit",
                "--out",
                str(meta),
                "--init",
                str(plain),
                "--mode",
                "meta",
                "--chunks",
                "3",
                "--chunk-bytes",
                "32",
                "--steps",
                "1",
                "--copy-fraction",
                "0.5",
                *common,
            ]
        )
        == 0
    )
    learned, *_ = load_model(meta)
    assert learned.card["mode"] == "meta" and learned.card["total_steps"] == 4

    assert train(["tune", "--corpus", str(corpus), "--model", str(meta), "--threads", "1"]) == 0
    tuned, *_ = load_model(meta)
    assert set(tuned.card["tuning"]["dev_bpb_by_inner_lr"]) >= {"0.0", "3.0"}

    shipped = tmp_path / "shipped"
    assert (
        train(
            [
                "export",
                "--corpus",
                str(corpus),
                "--model",
                str(meta),
                "--out",
                str(shipped),
                "--name",
                "tiny-test",
                "--heldout-bytes",
                "1024",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    model, _, extra = load_model(shipped)
    assert extra == {} and model.card["name"] == "tiny-test"
    heldout = model.card["heldout_bits_per_byte"]
    assert {"loghub/BGL", "loghub/HDFS", "loghub/OpenStack"} <= set(heldout)
    assert all(v["bytes"] == 1024 for v in heldout.values())
    out = capsys.readouterr().out
    assert '"train_bpb"' in out and '"chosen_inner_lr"' in out

    # The card measured again on today's split: only the card changes, every held-out source of
    # the content-disjoint split is in it, and the copies it dropped are counted.
    shard = (shipped / "shard-00001.safetensors").read_bytes()
    split = split_files(shared())
    args = ["--model", str(shipped), "--shared", str(shared()), "--heldout-bytes", "512"]
    assert train(["card", *args, "--threads", "1"]) == 0
    model, _, _ = load_model(shipped)
    assert (shipped / "shard-00001.safetensors").read_bytes() == shard
    assert model.card["name"] == "tiny-test" and model.card["mode"] == "meta"
    heldout = model.card["heldout_bits_per_byte"]
    systems = {f"loghub/{f.name.split('/')[0]}" for f in split.heldout if f.source == "loghub"}
    assert set(heldout) == systems | {f.source for f in split.heldout if f.source != "loghub"}
    assert all(v["bytes"] == 512 and v["bpb_ttt"] > 0 for v in heldout.values())
    assert model.card["heldout_dropped_copies"] == len(split.dropped)
    assert model.card["heldout_missing_sources"] == split.missing


def test_copy_rows_repeat_a_recent_line_within_reach():
    text = b"".join(f"job {i} finished on node-{i % 7} after {i} s\n".encode() for i in range(40))
    tokens = torch.tensor([list(text[:513])] * 6)
    generator = torch.Generator().manual_seed(0)
    out = with_copies(tokens, 1.0, generator, reach=120)
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert torch.equal(with_copies(tokens, 0.0, generator), tokens)
    repeated = 0
    for row in out:
        lines = bytes(row.tolist()).split(b"\n")[:-1]  # the last piece is cut short
        seen = {}
        for i, line in enumerate(lines):
            if line in seen:
                assert i - seen[line] <= 4  # a copy follows its original within reach
                repeated += 1
            seen[line] = i
    assert repeated >= 6
