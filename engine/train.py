"""The outer loop: build the corpus, pre-train, meta-learn, tune the inner learning rate.

    python -m memsdk.engine.train corpus --shared ../shared --out data/corpus
    python -m memsdk.engine.train fit --corpus data/corpus --out runs/small --preset small \\
        --mode plain --steps 4000
    python -m memsdk.engine.train fit --corpus data/corpus --out runs/meta --init runs/small \\
        --mode meta --steps 1000
    python -m memsdk.engine.train tune --corpus data/corpus --model runs/meta
    python -m memsdk.engine.train export --corpus data/corpus --model runs/meta \
        --out engine/weights/default --name small-meta
    python -m memsdk.engine.train card --model engine/weights/default --shared ../shared

``plain`` is next-byte pre-training with the initial fast weights. ``meta`` is TTT-E2E: each
sequence is cut into chunks; the loss of each chunk is taken with the fast weights produced by
inner steps on the chunks before it, and the outer gradient flows through those inner steps
(second order), so the slow weights and the initial fast weights learn to learn. ``tune`` picks
the inner learning rate by prequential bits per byte on the development slice of the training
side (the last 1% of ``train.bin``, never used for a training step) and stores it in the model.
``export`` writes the weights without optimizer state plus a model card with held-out bits per
byte, for shipping in ``engine/weights/``; ``card`` measures those held-out figures again for a
shipped model, on the split as :func:`memsdk.engine.corpus.split_files` makes it today (held-out
files that are copies of training files dropped), and rewrites only the card.

Checkpoints hold the model, the optimizer moments and a card; ``fit`` resumes from ``--out``
when it already holds a checkpoint. Logs are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memsdk.engine.checkpoint import load_model, save_model, update_card
from memsdk.engine.corpus import CorpusFile, build_corpus, read_text, split_files
from memsdk.engine.model import ByteLM, ModelConfig
from memsdk.engine.ttt import LN2, TTTConfig, TTTState, inner_update, stream

DEV_FRACTION = 0.01
DEV_EVAL_BYTES = 64 * 1024
TUNE_BYTES = 256 * 1024
TUNE_RATES = (0.0, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0)


class Corpus:
    """``train.bin`` as a memory map: the first 99% for training steps, the rest for dev."""

    def __init__(self, directory: Path) -> None:
        self.data = np.memmap(directory / "train.bin", dtype=np.uint8, mode="r")
        self.dev_start = int(len(self.data) * (1 - DEV_FRACTION))
        self.summary = json.loads((directory / "corpus.json").read_text())

    def batch(self, generator: torch.Generator, batch: int, length: int) -> torch.Tensor:
        """(batch, length + 1) random windows of the training part."""
        starts = torch.randint(0, self.dev_start - length - 1, (batch,), generator=generator)
        rows = [np.asarray(self.data[s : s + length + 1]) for s in starts.tolist()]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def dev(self, size: int) -> bytes:
        return bytes(self.data[self.dev_start : self.dev_start + size])


def with_copies(
    tokens: torch.Tensor, fraction: float, generator: torch.Generator, *, reach: int = 200
) -> torch.Tensor:
    """Training rows in which lines recur, as retrieved passages recur before a query.

    In a ``fraction`` of the rows (B, L), after each line, with probability 0.35, one of the
    lines that ended within the last ``reach`` bytes is written again; the row is then cut back
    to L. The copy sits inside the attention window of its original, so the model learns to
    continue a line by copying an earlier one: what the notepad branch of a routed query needs
    (the plain corpus holds too few exact repeats within the window to teach it).
    """
    out = tokens.clone()
    width = tokens.shape[1]
    for r in range(len(tokens)):
        if float(torch.rand(1, generator=generator)) >= fraction:
            continue
        row = bytes(tokens[r].tolist())
        built = bytearray()
        recent: list[tuple[int, bytes]] = []  # (end offset in built, line)
        for line in row.splitlines(keepends=True):
            built += line
            recent = [(end, ln) for end, ln in recent if len(built) - end <= reach]
            if 8 <= len(line) <= reach:
                recent.append((len(built), line))
            if len(built) >= width:
                break
            if recent and float(torch.rand(1, generator=generator)) < 0.35:
                pick = int(torch.randint(0, len(recent), (1,), generator=generator))
                built += recent[pick][1]
        out[r] = torch.tensor(list(built[:width]) + list(row[len(built) :]), dtype=out.dtype)[
            :width
        ]
    return out


def plain_loss(model: ByteLM, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def meta_loss(model: ByteLM, tokens: torch.Tensor, chunk: int, ttt: TTTConfig) -> torch.Tensor:
    """TTT-E2E: mean loss of each chunk under the fast weights after inner steps on the chunks
    before it, differentiable through those steps. tokens (B, K*chunk + 1)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    batch, length = inputs.shape
    # The prefix does not depend on fast weights: run it once over the whole sequence.
    hidden, _ = model.prefix(model.embed(inputs), [None] * model.config.first_dynamic)
    initial = model.initial_fast_weights()
    fast = {n: w.expand(batch, *w.shape) for n, w in initial.items()}
    caches = [None] * model.config.n_dynamic
    losses = []
    for start in range(0, length, chunk):
        logits, caches = model.suffix(hidden[:, start : start + chunk], caches, fast)
        per_example = F.cross_entropy(
            logits.transpose(1, 2), targets[:, start : start + chunk], reduction="none"
        ).mean(1)  # (B,)
        losses.append(per_example.mean())
        if start + chunk < length:
            grads = torch.autograd.grad(per_example.sum(), list(fast.values()), create_graph=True)
            fast, _ = inner_update(fast, list(grads), initial, ttt, batched=True)
    return torch.stack(losses).mean()


def prequential_bpb(model: ByteLM, data: bytes, ttt: TTTConfig) -> float:
    state = TTTState(model, ttt)
    return stream(state, data, final=True).bits_per_byte


def _learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _log(record: dict) -> None:
    print(json.dumps(record), flush=True)


def fit(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    corpus = Corpus(Path(args.corpus))
    out = Path(args.out)
    ttt = TTTConfig(chunk_bytes=args.chunk_bytes, inner_lr=args.inner_lr)
    card: dict = {}
    extra: dict[str, torch.Tensor] = {}
    source = out if (out / "index.json").exists() else (Path(args.init) if args.init else None)
    if source is not None:
        model, metadata, extra = load_model(source)
        card = dict(metadata.get("card") or {})
        model.requires_grad_(True).train()
        if source != out:  # a new run from an initial model: its own step count and optimizer
            stage = {
                k: card.get(k)
                for k in ("mode", "steps", "bytes_seen", "batch", "sequence_bytes", "copy_fraction")
                if k in card
            }
            card = {"init": str(source), "stages": [*card.get("stages", []), stage]}
            extra = {}
    else:
        model = ByteLM(ModelConfig.preset(args.preset))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    names = dict(model.named_parameters())
    for name, param in names.items():
        if f"adam.{name}.exp_avg" in extra:
            optimizer.state[param] = {
                "step": extra[f"adam.{name}.step"].reshape(()).float(),
                "exp_avg": extra[f"adam.{name}.exp_avg"].to(device),
                "exp_avg_sq": extra[f"adam.{name}.exp_avg_sq"].to(device),
            }
    step = int(card.get("steps", 0))
    bytes_seen = int(card.get("bytes_seen", 0))
    history = list(card.get("history", []))
    generator = torch.Generator().manual_seed(args.seed + step)
    length = args.chunks * args.chunk_bytes if args.mode == "meta" else args.seq_bytes
    dev = corpus.dev(DEV_EVAL_BYTES)
    started = time.perf_counter()

    def save() -> None:
        moments = {}
        for name, param in names.items():
            state = optimizer.state.get(param)
            if state:
                moments[f"adam.{name}.step"] = torch.as_tensor(state["step"]).reshape(1).float()
                moments[f"adam.{name}.exp_avg"] = state["exp_avg"]
                moments[f"adam.{name}.exp_avg_sq"] = state["exp_avg_sq"]
        card.update(
            mode=args.mode,
            steps=step,
            bytes_seen=bytes_seen,
            history=history,
            corpus={
                "train_bytes": corpus.summary["train_bytes"],
                "train_bytes_by_source": corpus.summary["train_bytes_by_source"],
                "heldout_systems": corpus.summary["heldout_systems"],
                "missing_sources": corpus.summary["missing_sources"],
            },
            batch=args.batch,
            sequence_bytes=length,
            copy_fraction=args.copy_fraction,
            total_steps=step + sum(st["steps"] for st in card.get("stages", [])),
            total_bytes_seen=bytes_seen + sum(st["bytes_seen"] for st in card.get("stages", [])),
        )
        model.cpu()
        save_model(model, out, card=card, ttt=ttt, extra=moments)
        model.to(device)

    while step < args.steps:
        lr = _learning_rate(step, args.steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens = corpus.batch(generator, args.batch, length)
        if args.copy_fraction:
            tokens = with_copies(tokens, args.copy_fraction, generator)
        tokens = tokens.to(device)
        if args.mode == "meta":
            loss = meta_loss(model, tokens, args.chunk_bytes, ttt)
        else:
            loss = plain_loss(model, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bytes_seen += args.batch * length
        if step % args.log_every == 0:
            _log(
                {
                    "step": step,
                    "train_bpb": float(loss.detach()) / LN2,
                    "lr": lr,
                    "bytes_seen": bytes_seen,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        if step % args.eval_every == 0 or step == args.steps:
            model.eval().cpu()
            with torch.no_grad():
                frozen = prequential_bpb(model, dev, replace(ttt, inner_lr=0.0))
            adapted = prequential_bpb(model, dev, ttt)
            model.train().to(device)
            record = {
                "step": step,
                "dev_bpb_frozen": frozen,
                "dev_bpb_ttt": adapted,
                "bytes_seen": bytes_seen,
            }
            history.append(record)
            _log(record)
            save()
        elif step % args.save_every == 0:
            save()
    save()


def tune(args: argparse.Namespace) -> None:
    """Choose the inner learning rate on the dev slice and write it into the checkpoint."""
    torch.set_num_threads(args.threads)
    corpus = Corpus(Path(args.corpus))
    model, metadata, extra = load_model(args.model)
    ttt = model.default_ttt
    dev = corpus.dev(TUNE_BYTES)
    scores = {}
    for rate in TUNE_RATES:
        scores[rate] = prequential_bpb(model, dev, replace(ttt, inner_lr=rate))
        _log({"inner_lr": rate, "dev_bpb": scores[rate]})
    best = min(scores, key=scores.get)
    card = dict(metadata.get("card") or {})
    card["tuning"] = {
        "dev_bytes": len(dev),
        "dev_bpb_by_inner_lr": {str(k): v for k, v in scores.items()},
    }
    save_model(model, args.model, card=card, ttt=replace(ttt, inner_lr=best), extra=extra)
    _log({"chosen_inner_lr": best})


def heldout_streams(files: list[CorpusFile], per_source: int) -> dict[str, bytes]:
    """Up to ``per_source`` bytes of each source's held-out files, in the listed order (for
    loghub: per held-out system)."""
    streams: dict[str, bytes] = {}
    for file in files:
        key = f"loghub/{file.name.split('/')[0]}" if file.source == "loghub" else file.source
        have = streams.get(key, b"")
        if len(have) < per_source and Path(file.path).exists():
            streams[key] = (have + read_text(file))[:per_source]
    return streams


HELDOUT_NOTE = (
    "prequential bits per byte on the first bytes of each held-out source (files never used for "
    "training, none a copy or near-copy of a training file), with inner_lr=0 (frozen) and with "
    "the shipped inner loop"
)


def heldout_figures(model: ByteLM, files: list[CorpusFile], per_source: int) -> dict:
    """The model card's held-out figures: frozen and test-time-trained bits per byte."""
    ttt = model.default_ttt
    heldout = {}
    for source, data in heldout_streams(files, per_source).items():
        heldout[source] = {
            "bytes": len(data),
            "bpb_frozen": prequential_bpb(model, data, replace(ttt, inner_lr=0.0)),
            "bpb_ttt": prequential_bpb(model, data, ttt),
        }
        _log({"heldout": source, **heldout[source]})
    return heldout


def export(args: argparse.Namespace) -> None:
    """Write a checkpoint's weights (no optimizer moments) and a model card with held-out
    bits per byte, for shipping as package data."""
    torch.set_num_threads(args.threads)
    model, metadata, _ = load_model(args.model)
    corpus = Corpus(Path(args.corpus))
    card = dict(metadata.get("card") or {})
    files = [CorpusFile(e["source"], e["path"], e["name"]) for e in corpus.summary["heldout"]]
    card.update(
        name=args.name,
        parameters=model.num_parameters(),
        heldout_bits_per_byte=heldout_figures(model, files, args.heldout_bytes),
        heldout_note=HELDOUT_NOTE,
    )
    save_model(model, args.out, card=card, ttt=model.default_ttt)
    _log({"exported": args.out, "parameters": model.num_parameters()})


def card(args: argparse.Namespace) -> None:
    """Measure a checkpoint's held-out figures again on today's split; rewrite only its card."""
    torch.set_num_threads(args.threads)
    model, metadata, _ = load_model(args.model)
    split = split_files(Path(args.shared))
    card_ = dict(metadata.get("card") or {})
    card_.update(
        heldout_bits_per_byte=heldout_figures(model, split.heldout, args.heldout_bytes),
        heldout_note=HELDOUT_NOTE,
        heldout_dropped_copies=len(split.dropped),
        heldout_missing_sources=split.missing,  # not installed here (engine/weights/README.md)
    )
    update_card(args.model, card_)
    _log({"card": str(args.model), "dropped_copies": len(split.dropped), "missing": split.missing})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memsdk.engine.train", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="build train.bin and corpus.json")
    corpus.add_argument("--shared", default="../shared", help="folder holding data/loghub ...")
    corpus.add_argument("--out", required=True)
    corpus.add_argument("--max-source-mb", type=int, default=24)

    train = sub.add_parser("fit", help="train (resumes from --out when it holds a checkpoint)")
    train.add_argument("--corpus", required=True)
    train.add_argument("--out", required=True)
    train.add_argument(
        "--preset", default="small", choices=("tiny", "tiny_ttt_linear", "small", "base")
    )
    train.add_argument("--init", help="checkpoint to start from (e.g. a plain pre-training run)")
    train.add_argument("--mode", default="plain", choices=("plain", "meta"))
    train.add_argument("--steps", type=int, required=True, help="total steps of this run")
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--seq-bytes", type=int, default=512, help="plain: sequence length")
    train.add_argument("--chunks", type=int, default=4, help="meta: chunks per sequence")
    train.add_argument("--chunk-bytes", type=int, default=512)
    train.add_argument("--inner-lr", type=float, default=3.0)
    train.add_argument(
        "--copy-fraction",
        type=float,
        default=0.0,
        help="share of rows in which lines recur within the window (teaches copying)",
    )
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--warmup", type=int, default=100)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log-every", type=int, default=20)
    train.add_argument("--eval-every", type=int, default=500)
    train.add_argument("--save-every", type=int, default=100)
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--threads", type=int, default=torch.get_num_threads())

    tuning = sub.add_parser("tune", help="pick the inner learning rate on the dev slice")
    tuning.add_argument("--corpus", required=True)
    tuning.add_argument("--model", required=True)
    tuning.add_argument("--threads", type=int, default=torch.get_num_threads())

    exporting = sub.add_parser("export", help="ship a checkpoint: weights + model card")
    exporting.add_argument("--model", required=True)
    exporting.add_argument("--corpus", required=True)
    exporting.add_argument("--out", required=True)
    exporting.add_argument("--name", required=True)
    exporting.add_argument("--heldout-bytes", type=int, default=64 * 1024)
    exporting.add_argument("--threads", type=int, default=torch.get_num_threads())

    carding = sub.add_parser("card", help="measure a model's held-out figures again")
    carding.add_argument("--model", required=True, help="checkpoint folder")
    carding.add_argument("--shared", default="../shared", help="folder holding data/loghub ...")
    carding.add_argument("--heldout-bytes", type=int, default=64 * 1024)
    carding.add_argument("--threads", type=int, default=torch.get_num_threads())

    args = parser.parse_args(argv)
    if args.command == "corpus":
        summary = build_corpus(
            args.out, shared=args.shared, max_source_bytes=args.max_source_mb << 20
        )
        _log(
            {k: v for k, v in summary.items() if k not in ("train", "heldout")}
            | {"heldout_files": len(summary["heldout"])}
        )
    elif args.command == "fit":
        fit(args)
    elif args.command == "export":
        export(args)
    elif args.command == "card":
        card(args)
    else:
        tune(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
