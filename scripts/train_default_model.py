"""Train the embedded default CrystalFormer on this project's corpus, on CPU, within a wall-clock budget.

    python scripts/build_corpus.py --output data/corpus          # first
    python scripts/train_default_model.py --corpus data/corpus --sweep-minutes 5 --total-minutes 45

1. Size sweep: each candidate size trains for ``--sweep-minutes``; the validation NLL picks the winner.
2. The winner continues (resumed from its checkpoint) until ``--total-minutes`` of training in all.
3. The result (safetensors, config, tokenizer, model card, loss curves) is written to ``--output``
   (default: the package's ``crystalformer_rl/pretrained/default``).
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import TrainerCallback

from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
from crystalformer_rl.tokenization import CrystalTokenizer
from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer, plot_loss_curves


CANDIDATES = {
    "xs": {"num_layers": 2, "num_heads": 4, "key_size": 16, "model_size": 64, "embed_size": 32, "h0_size": 64},
    "s": {"num_layers": 4, "num_heads": 4, "key_size": 32, "model_size": 64, "embed_size": 32, "h0_size": 128},
    "m": {"num_layers": 4, "num_heads": 8, "key_size": 32, "model_size": 128, "embed_size": 32, "h0_size": 256},
}


class TimeBudget(TrainerCallback):
    """Stop (and checkpoint, and validate) once the wall-clock budget is spent."""

    def __init__(self, seconds: float):
        self.deadline = time.time() + seconds

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() > self.deadline:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = True


def train(name, config_kwargs, train_ds, valid_ds, out, seconds, resume=None, eval_steps=200, lr=1e-3):
    torch.manual_seed(0)
    model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(**config_kwargs))
    args = CrystalPretrainConfig(
        output_dir=str(out / name),
        max_steps=10**6,
        eval_steps=eval_steps,
        save_steps=eval_steps,
        logging_steps=25,
        per_device_train_batch_size=64,
        learning_rate=lr,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = CrystalPretrainer(
        model, args, train_dataset=train_ds, eval_dataset=valid_ds, callbacks=[TimeBudget(seconds)]
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    return trainer, metrics, time.time() - start, sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--work", default="runs/default_model")
    parser.add_argument(
        "--output", default=str(Path(__file__).resolve().parents[1] / "crystalformer_rl" / "pretrained" / "default")
    )
    parser.add_argument("--sweep-minutes", type=float, default=5)
    parser.add_argument("--total-minutes", type=float, default=45)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_ds = load_dataset("parquet", data_files=f"{args.corpus}/train.parquet", split="train")
    valid_ds = load_dataset("parquet", data_files=f"{args.corpus}/validation.parquet", split="train")

    sweep_file = work / "sweep.json"
    sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else {}
    for name in args.candidates:
        if name in sweep:
            continue
        _, metrics, seconds, params = train(name, CANDIDATES[name], train_ds, valid_ds, work, args.sweep_minutes * 60)
        sweep[name] = {"config": CANDIDATES[name], "parameters": params, "seconds": seconds, **metrics}
        sweep_file.write_text(json.dumps(sweep, indent=2))
        print(json.dumps({name: sweep[name]}), flush=True)
    best = min(sweep, key=lambda n: sweep[n]["eval_loss"])
    print(f"best size: {best}", flush=True)

    checkpoints = sorted((work / best).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    remaining = max(args.total_minutes - args.sweep_minutes, 0) * 60
    trainer, metrics, seconds, params = train(
        best,
        CANDIDATES[best],
        train_ds,
        valid_ds,
        work,
        remaining,
        resume=str(checkpoints[-1]) if checkpoints else None,
    )
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(out)
    CrystalTokenizer(n_max=model.config.n_max).save_pretrained(out)
    plot_loss_curves(trainer.state.log_history, work / "loss_curves.png")
    (work / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    result = {
        "best": best,
        "parameters": params,
        "steps": trainer.state.global_step,
        "crystals_seen": trainer.state.global_step * 64,
        "validation": metrics,
        "sweep": sweep,
        "total_training_minutes": round((sweep[best]["seconds"] + seconds) / 60, 1),
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    os.sync()


if __name__ == "__main__":
    main()
