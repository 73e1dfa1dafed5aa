"""Training throughput (crystals/s), lever by lever, on real MP crystals; prints JSON.

    python benchmarks/bench_train.py --size xs --batch 128
    python benchmarks/bench_train.py --size paper --batch 100 --steps 12

Two parts, one run, one thread count per line (stated in the JSON):

* ``step`` variants: the bare training step (forward, backward, clip, Adam), float32, over the same batches. Each
  lever is added to the previous one: previous defaults (random batches padded to their longest crystal, the
  full output rows assembled, a host sync per loss term) -> length-grouped batches (the Trainer's
  ``LengthGroupedSampler`` order) -> loss-only head (``output_logits=False``, no per-term ``.item()``) ->
  ``torch.compile``. Also measured: reference padding to n_max, dropout 0 (its cost), bf16 autocast and 1 vs 2
  threads.
  Every variant first runs all its batches once untimed (warm-up, compilation), then is timed on them.
* ``pretraining path``: ``CrystalPretrainer.train()`` with the project's default pretraining settings vs the
  previous defaults, timed from step ``--warmup-steps`` on (compilation excluded, reported separately).

The reference JAX code trains the paper configuration at 5.4 crystals/s (batch 100) on this kind of machine.

``--rows N`` draws every batch from N crystals only, e.g. a small set (an SFT set, DPO pairs, a user's few thousand
crystals), where `Trainer`'s own length grouping shrinks its mega-batch to ``N // (4·batch)`` batches and barely
groups; the pretraining path then also runs with that grouping (``Trainer's length grouping``) beside the
project's (:func:`~crystalformer_rl.trainers.pretrain_trainer.length_grouped_indices`)::

    python benchmarks/bench_train.py --size paper --batch 100 --rows 1000 --skip "" --pretrain-steps 60 --warmup-steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from crystalformer_rl.data import DEFAULT_TRAIN_DATA
from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
from crystalformer_rl.tokenization import CrystalTokenizer
from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer, PaddingCollator
from crystalformer_rl.trainers.pretrain_trainer import TERMS
from crystalformer_rl.trainers.utils import MODEL_SIZES


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_JAX = 5.4


def load_rows(n: int, seed: int = 0) -> list[dict]:
    """n real MP crystals: the corpus if built, else the MP-20 pilot set tokenized here."""
    import pandas as pd

    corpus = Path(DEFAULT_TRAIN_DATA)
    if corpus.exists():
        frame = pd.read_parquet(corpus, columns=["G", "W", "A", "XYZ", "L", "num_sites"])
        return [dict(r) for _, r in frame.sample(min(n, len(frame)), random_state=seed).iterrows()]
    cifs = pd.read_csv(SHARED / "data" / "mp20_pilot" / "train.csv.gz").cif[:n]
    tokenizer = CrystalTokenizer()
    return [{**(d := tokenizer.encode(c).as_dict()), "num_sites": len(d["W"])} for c in cifs]


def make_model(size: str, dropout: float | None = None, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = dict(MODEL_SIZES[size])
    if dropout is not None:
        kwargs.update(hidden_dropout=dropout, attention_dropout=dropout)
    return CrystalFormerForCrystalGeneration(CrystalFormerConfig(**kwargs))


def time_steps(model, batches, logits_and_sync: bool, compile_model: bool = False, bf16: bool = False) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    if compile_model:
        model._forward_checked = torch.compile(model._forward_checked, dynamic=True)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch, output_logits=logits_and_sync)
        out.loss.backward()
        if logits_and_sync:
            [out[t].item() for t in TERMS]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for batch in batches:
        step(batch)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - start
    crystals = sum(b["G"].shape[0] for b in batches)
    return {"crystals_per_s": round(crystals / seconds, 1), "warmup_seconds": round(warm, 1)}


class StepClock(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.compile_seconds = warmup, None, None, None
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
            self.compile_seconds = self.start - self.t0
        self.end = time.perf_counter()


class TrainerGroupingPretrainer(CrystalPretrainer):
    """The project's training step with `Trainer`'s own length grouping (its mega-batch of ``n // (4·batch)``)."""

    def _get_train_sampler(self, train_dataset=None):
        from transformers.trainer_pt_utils import LengthGroupedSampler

        from crystalformer_rl.trainers.pretrain_trainer import site_counts

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(self.args.train_batch_size, lengths=site_counts(dataset))


class PreviousPretrainer(CrystalPretrainer):
    """The previous training step: full output rows and a host sync per loss term."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        [outputs[t].item() for t in TERMS]
        return (outputs.loss, outputs) if return_outputs else outputs.loss


def time_pretraining(size, rows, batch, steps, warmup, trainer_class, out_dir: str, dropout=None, **overrides):
    from datasets import Dataset

    model = make_model(size, dropout)
    args = CrystalPretrainConfig(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        **overrides,
    )
    clock = StepClock(warmup)
    trainer = trainer_class(model, args, train_dataset=Dataset.from_list(rows), callbacks=[clock])
    trainer.train()
    seconds = clock.end - clock.start
    return {
        "crystals_per_s": round((steps - warmup) * batch / seconds, 1),
        "train_sampling_strategy": args.train_sampling_strategy,
        "compile_model": args.compile_model,
        "dropout": model.config.hidden_dropout,
        "seconds_before_timing": round(clock.compile_seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="xs", choices=list(MODEL_SIZES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24, help="batches per step variant")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=60)
    parser.add_argument("--skip", nargs="*", default=[], help="variant names to skip")
    parser.add_argument("--skip-pretraining", nargs="*", default=[], help="pretraining runs to skip")
    parser.add_argument("--output-dir", default="runs/bench_train")
    parser.add_argument(
        "--rows", type=int, default=None, help="crystals to draw from (default: batch × 50); small: a small set"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = load_rows(args.rows or max(args.batch * 50, args.batch * args.steps))
    small = len(rows) < args.batch * 50
    collate = PaddingCollator(21)
    rng = np.random.default_rng(0)

    def batch_of(i):  # the i-th batch of the rows in order, wrapping around: always full, whatever len(rows)
        return [rows[(i * args.batch + j) % len(rows)] for j in range(args.batch)]

    random_batches = [collate(batch_of(i)) for i in range(args.steps)]
    order = get_length_grouped_indices(
        [r["num_sites"] for r in rows], args.batch, generator=torch.Generator().manual_seed(0)
    )
    grouped_all = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]
    picked = rng.choice(len(grouped_all), size=min(args.steps, len(grouped_all)), replace=False)
    grouped = [collate([rows[j] for j in grouped_all[i]]) for i in picked]
    padded = [PaddingCollator(21, pad_to_n_max=True)(batch_of(i)) for i in range(args.steps)]

    def sites(batches):
        return round(float(np.mean([b["W"].shape[1] for b in batches])), 2)

    variants = {
        "pad_to_n_max (reference padding), previous step": (None, padded, True, False, None),
        "previous defaults (random batches, output rows, per-term sync)": (None, random_batches, True, False, None),
        "+ length-grouped batches": (None, grouped, True, False, None),
        "+ loss-only head, no per-step sync (eager default)": (None, grouped, False, False, None),
        "  same, dropout 0 (the cost of dropout)": (0.0, grouped, False, False, None),
        "  same, bf16 autocast (AMX on CPUs that have it)": (None, grouped, False, False, None, True),
        "  same, eager, 1 thread": (None, grouped, False, False, 1),
        "+ torch.compile": (None, grouped, False, True, None),
        "  same, compiled, 1 thread": (None, grouped, False, True, 1),
    }
    results = {}
    for name, (dropout, batches, logits, compiled, threads, *bf16) in variants.items():
        key = name.strip()
        if key in args.skip or any(s in key for s in args.skip):
            continue
        torch.set_num_threads(threads or args.threads)
        label = f"{key} [threads={torch.get_num_threads()}]"
        results[label] = {
            **time_steps(make_model(args.size, dropout), batches, logits, compiled, bool(bf16)),
            "mean_sites": sites(batches),
        }
        print(json.dumps({label: results[label]}), flush=True)
    torch.set_num_threads(args.threads)

    pretraining = {}
    runs = {
        "previous defaults": {"train_sampling_strategy": "random", "compile_model": False},
        "project defaults": {},
        **({"project defaults, Trainer's length grouping": {}} if small else {}),
        "project defaults, compile_model": {"compile_model": True},
        "project defaults, dropout 0": {"dropout": 0.0},
        "project defaults, bf16": {"bf16": True},
    }
    for name, overrides in runs.items():
        if any(s in name for s in args.skip_pretraining):
            continue
        pretraining[name] = time_pretraining(
            args.size,
            rows,
            args.batch,
            args.pretrain_steps,
            args.warmup_steps,
            PreviousPretrainer
            if name == "previous defaults"
            else TrainerGroupingPretrainer
            if "Trainer's length grouping" in name
            else CrystalPretrainer,
            f"{args.output_dir}/{name}",
            **overrides,
        )
        print(json.dumps({f"pretraining path, {name}": pretraining[name]}), flush=True)

    summary = {
        "benchmark": "train",
        "model_size": args.size,
        "parameters": sum(p.numel() for p in make_model(args.size).parameters()),
        "batch": args.batch,
        "crystals_drawn_from": len(rows),
        "threads": args.threads,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "step_variants": results,
        "pretraining_path": pretraining,
        "pretraining_speedup_vs_previous": round(
            pretraining["project defaults"]["crystals_per_s"] / pretraining["previous defaults"]["crystals_per_s"], 2
        )
        if {"project defaults", "previous defaults"} <= set(pretraining)
        else None,
        "reference_jax_crystals_per_s_paper_batch_100": REFERENCE_JAX,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
