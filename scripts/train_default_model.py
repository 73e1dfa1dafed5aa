"""Train the embedded default CrystalFormer on this project's corpus, on CPU, within a wall-clock budget.

    python scripts/build_corpus.py --output data/corpus                      # first
    python scripts/train_default_model.py --sweep-minutes 6 --main-minutes 66

1. Size sweep: every candidate gets the same budget (``--sweep-minutes`` of training on the same cores) with a
   complete schedule (linear warmup, cosine decay to 0): a 40-step probe measures its steps/s, which fixes its
   ``max_steps``; the validation NLL at the end ranks the candidates.
2. The winner continues from its sweep weights for ``--main-minutes`` with a fresh warmup + cosine schedule
   (Adam state restarted), validated per term along the way. ``--main-minutes 0`` skips this phase: the sweep run
   is then the model (one long schedule per candidate, e.g. ``--candidates s --sweep-minutes 80``).
2b. Optionally (``--continue-minutes``, ``--continue-lr``) a further warm restart from the main phase's weights: a
   new warmup + cosine schedule at a lower peak and another data order. This is how a later session adds budget
   to the shipped model without repeating the earlier phases (their checkpoints must be in ``--work``).
3. The result (safetensors, config, tokenizer, model card inputs, loss curves, log history) goes to ``--output``
   (default: the package's ``crystalformer_rl/pretrained/default``).

Every phase checkpoints (``--work``): rerun the same command after a kill and it resumes where it stopped (the
steps planned for a phase are stored in ``plan.json``, so the schedule is the same after a resume).
Run it alone on the machine: training on shared cores is 10-100x slower.
"""

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import TrainerCallback

from crystalformer_rl.data import DEFAULT_CORPUS_DIR
from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
from crystalformer_rl.pretrained import SPACE_GROUP_FILE
from crystalformer_rl.tokenization import CrystalTokenizer
from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer, plot_loss_curves
from crystalformer_rl.utils import atomic_write_text


# Candidate sizes and their peak learning rates (wider models take a smaller one).
CANDIDATES = {
    "xs": ({"num_layers": 2, "num_heads": 4, "key_size": 16, "model_size": 64, "embed_size": 32, "h0_size": 64}, 2e-3),
    "xsm": (
        {"num_layers": 3, "num_heads": 4, "key_size": 24, "model_size": 64, "embed_size": 32, "h0_size": 96},
        2e-3,
    ),
    "s": ({"num_layers": 4, "num_heads": 4, "key_size": 32, "model_size": 64, "embed_size": 32, "h0_size": 128}, 2e-3),
    "m": (
        {"num_layers": 4, "num_heads": 8, "key_size": 32, "model_size": 128, "embed_size": 32, "h0_size": 256},
        1e-3,
    ),
    "l": (
        {"num_layers": 8, "num_heads": 8, "key_size": 32, "model_size": 128, "embed_size": 32, "h0_size": 256},
        1e-3,
    ),
}
BATCH = 128
WARMUP_FRACTION = 0.03


class Clock(TrainerCallback):
    """Wall-clock seconds per optimizer step after the first `skip` steps."""

    def __init__(self, skip: int):
        self.skip, self.start, self.steps = skip, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.skip:
            self.start = time.perf_counter()
        elif self.start is not None:
            self.steps += 1

    def rate(self) -> float:
        return self.steps / (time.perf_counter() - self.start)


def trainer_for(model, out, max_steps, lr, train_ds, valid_ds, eval_steps, callbacks=(), save=True, seed=0):
    args = CrystalPretrainConfig(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(int(WARMUP_FRACTION * max_steps), 1),
        eval_steps=eval_steps,
        save_steps=eval_steps,
        save_strategy="steps" if save else "no",
        save_total_limit=2,
        logging_steps=50,
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
        report_to="none",
        eval_strategy="steps" if valid_ds is not None else "no",
    )
    return CrystalPretrainer(model, args, train_dataset=train_ds, eval_dataset=valid_ds, callbacks=list(callbacks))


def probe_steps_per_second(name, config, lr, train_ds, work) -> float:
    """Steps/s of this candidate on these cores, timed over steps 2-50: the rest of the first length-grouped
    mega-batch (50 batches of one random 6,400-crystal draw, sorted by length), so long and short batches in
    their real proportion."""
    torch.manual_seed(0)
    model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(**config))
    clock = Clock(skip=1)
    trainer = trainer_for(model, work / "probe" / name, 50, lr, train_ds, None, 10**9, [clock], save=False)
    trainer.train()
    shutil.rmtree(work / "probe" / name, ignore_errors=True)
    return clock.rate()


def last_checkpoint(folder: Path) -> str | None:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(checkpoints[-1]) if checkpoints else None


def run_phase(key, config, lr, minutes, train_ds, valid_ds, work, plan, init_from=None, evals=8, seed=0):
    """Train one phase to its planned step count (resuming if interrupted); return (trainer, metrics, seconds)."""
    if key not in plan:
        rate = probe_steps_per_second(key, config, lr, train_ds, work)
        plan[key] = {"steps_per_second": rate, "max_steps": int(rate * minutes * 60), "lr": lr, "minutes": minutes}
        atomic_write_text(json.dumps(plan, indent=2), work / "plan.json")
        print(json.dumps({key: plan[key]}), flush=True)
    max_steps = plan[key]["max_steps"]
    torch.manual_seed(0)
    if init_from:
        model = CrystalFormerForCrystalGeneration.from_pretrained(init_from)
    else:
        model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(**config))
    eval_steps = max(max_steps // evals, 1)
    trainer = trainer_for(model, work / key, max_steps, lr, train_ds, valid_ds, eval_steps, seed=seed)
    start = time.time()
    trainer.train(resume_from_checkpoint=last_checkpoint(work / key))
    metrics = trainer.evaluate()
    trainer.save_model(str(work / key / "final"))
    (work / key / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    plot_loss_curves(trainer.state.log_history, work / key / "loss_curves.png")
    return trainer, metrics, time.time() - start


def _record_seconds(work: Path, key: str, seconds: float):
    """Keep a phase's first (real) training time: a rerun that resumes a finished phase takes seconds."""
    file = work / "seconds.json"
    record = json.loads(file.read_text()) if file.exists() else {}
    record.setdefault(key, seconds)
    atomic_write_text(json.dumps(record, indent=2), file)


def _phase_seconds(work: Path, key: str, seconds: float) -> float:
    file = work / "seconds.json"
    return json.loads(file.read_text()).get(key, seconds) if file.exists() else seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--work", default="runs/default_model")
    parser.add_argument(
        "--output", default=str(Path(__file__).resolve().parents[1] / "crystalformer_rl" / "pretrained" / "default")
    )
    parser.add_argument("--sweep-minutes", type=float, default=6)
    parser.add_argument("--main-minutes", type=float, default=66)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--continue-minutes", type=float, default=0, help="warm restart after the main phase")
    parser.add_argument("--continue-lr", type=float, default=None, help="its peak lr (default: half the main one)")
    parser.add_argument(
        "--sweep-only", action="store_true", help="stop after the sweep (e.g. to run candidates in parallel)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_ds = load_dataset("parquet", data_files=f"{args.corpus}/train.parquet", split="train")
    valid_ds = load_dataset("parquet", data_files=f"{args.corpus}/validation.parquet", split="train")
    train_ds, valid_ds = (
        d.select_columns(["G", "W", "A", "XYZ", "L", "num_sites", "num_atoms"]) for d in (train_ds, valid_ds)
    )
    plan_file, sweep_file = work / "plan.json", work / "sweep.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else {}

    for name in args.candidates:
        if name in sweep:
            continue
        config, lr = CANDIDATES[name]
        trainer, metrics, seconds = run_phase(
            f"sweep-{name}",
            config,
            lr,
            args.sweep_minutes,
            train_ds,
            valid_ds,
            work,
            plan,
            evals=16 if args.main_minutes <= 0 else 8,
        )
        params = sum(p.numel() for p in trainer.model.parameters())
        sweep[name] = {"config": config, "lr": lr, "parameters": params, "seconds": seconds, **metrics}
        atomic_write_text(json.dumps(sweep, indent=2), sweep_file)
        print(json.dumps({name: sweep[name]}), flush=True)
    best = min(sweep, key=lambda n: sweep[n]["eval_loss"])
    print(f"best size: {best}", flush=True)
    if args.sweep_only:
        return

    config, lr = CANDIDATES[best]
    phases = [("sweep", f"sweep-{best}", sweep[best]["seconds"])]
    metrics = {k: v for k, v in sweep[best].items() if k.startswith("eval_") or k == "epoch"}
    if args.main_minutes > 0:  # 0: the sweep run itself is the model (one long schedule per candidate)
        trainer, metrics, seconds = run_phase(
            f"main-{best}",
            config,
            lr,
            args.main_minutes,
            train_ds,
            valid_ds,
            work,
            plan,
            init_from=str(work / f"sweep-{best}" / "final"),
            evals=16,
        )
        _record_seconds(work, f"main-{best}", seconds)
        phases.append(("main", f"main-{best}", seconds))
    if args.continue_minutes > 0:
        key = f"continue-{best}"
        trainer, metrics, seconds = run_phase(
            key,
            config,
            args.continue_lr or lr / 2,
            args.continue_minutes,
            train_ds,
            valid_ds,
            work,
            plan,
            init_from=str(work / phases[-1][1] / "final"),
            evals=12,
            seed=1,
        )
        phases.append(("continue", key, seconds))
        _record_seconds(work, key, seconds)
    out = Path(args.output)  # overwrite the model files only: the model card and shipped extras stay
    out.mkdir(parents=True, exist_ok=True)
    model = CrystalFormerForCrystalGeneration.from_pretrained(str(work / phases[-1][1] / "final"))
    model.save_pretrained(out)
    CrystalTokenizer(n_max=model.config.n_max).save_pretrained(out)
    counts = Counter(int(g) for g in train_ds["G"])
    atomic_write_text(json.dumps({str(g): counts[g] for g in sorted(counts)}), out / SPACE_GROUP_FILE)
    total_steps = sum(plan[key]["max_steps"] for _, key, _ in phases)
    histories = {phase: json.loads((work / key / "log_history.json").read_text()) for phase, key, _ in phases}
    result = {
        "best": best,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": BATCH,
        "lr": lr,
        "steps": {phase: plan[key]["max_steps"] for phase, key, _ in phases},
        "crystals_seen": total_steps * BATCH,
        "epochs": total_steps * BATCH / len(train_ds),
        "validation": metrics,
        "sweep": sweep,
        "plan": plan,
        "training_minutes": {
            "sweep_all_candidates": round(sum(s["seconds"] for s in sweep.values()) / 60, 1),
            **{phase: round(_phase_seconds(work, key, sec) / 60, 1) for phase, key, sec in phases},
            "winner_total": round(sum(_phase_seconds(work, key, sec) for _, key, sec in phases) / 60, 1),
        },
    }
    atomic_write_text(json.dumps(result, indent=2), work / "result.json")
    atomic_write_text(json.dumps(histories, indent=1), work / "log_history.json")
    combined, offset = [], 0  # one step axis over the winner's phases, for one loss-curve figure
    for phase, key, _ in phases:
        combined += [{**h, "step": h["step"] + offset, "phase": phase} for h in histories[phase] if "step" in h]
        offset += plan[key]["max_steps"]
    plot_loss_curves(combined, work / "loss_curves_all_phases.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
