"""Training throughput (crystals/s): padding each batch to its longest crystal vs padding to n_max (reference).

    python benchmarks/bench_train.py [--size paper|xs] [--batch 100] [--steps 3]

Same model, same batches, same run: forward + backward + Adam step with gradient clipping, float32, CPU threads
as configured. Prints JSON. Reference JAX implementation (paper config, this kind of machine): 6.5 crystals/s.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
from crystalformer_rl.tokenization import CrystalTokenizer
from crystalformer_rl.trainers import PaddingCollator
from crystalformer_rl.trainers.commands import MODEL_SIZES


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def load_rows(n: int):
    corpus = Path("data/corpus/train.parquet")
    if corpus.exists():
        import pandas as pd

        frame = pd.read_parquet(corpus).sample(n, random_state=0)
        return [dict(r) for _, r in frame.iterrows()]
    import pandas as pd

    cifs = pd.read_csv(SHARED / "data" / "mp20_pilot" / "train.csv.gz").cif[:n]
    tokenizer = CrystalTokenizer()
    return [tokenizer.encode(c).as_dict() for c in cifs]


def run(model, batches, steps):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1 : steps + 1]:
        step(batch)
    seconds = time.perf_counter() - start
    return steps * batches[0]["G"].shape[0] / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="paper", choices=list(MODEL_SIZES))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = load_rows(args.batch * (args.steps + 1))
    model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(**MODEL_SIZES[args.size]))
    chunks = [rows[i * args.batch : (i + 1) * args.batch] for i in range(args.steps + 1)]
    n_max = model.config.n_max
    per_batch = [PaddingCollator(n_max)(c) for c in chunks]
    fixed = [PaddingCollator(n_max, pad_to_n_max=True)(c) for c in chunks]
    ordered = sorted(rows, key=lambda r: len(r["W"]))  # what TrainingArguments(group_by_length=True) approximates
    grouped = [PaddingCollator(n_max)(ordered[i * args.batch : (i + 1) * args.batch]) for i in range(args.steps + 1)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    padded = run(model, fixed, args.steps)
    model.load_state_dict(state)
    dynamic = run(model, per_batch, args.steps)
    model.load_state_dict(state)
    by_length = run(model, grouped, args.steps)
    print(
        json.dumps(
            {
                "benchmark": "train",
                "model_size": args.size,
                "parameters": sum(p.numel() for p in model.parameters()),
                "batch": args.batch,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "cores": os.cpu_count(),
                "mean_sites_per_batch_padded": float(np.mean([b["W"].shape[1] for b in per_batch])),
                "crystals_per_s_pad_to_n_max": round(padded, 2),
                "crystals_per_s_pad_per_batch": round(dynamic, 2),
                "speedup": round(dynamic / padded, 2),
                "mean_sites_per_batch_grouped_by_length": float(np.mean([b["W"].shape[1] for b in grouped])),
                "crystals_per_s_pad_per_batch_grouped_by_length": round(by_length, 2),
                "speedup_grouped_by_length": round(by_length / padded, 2),
                "reference_jax_crystals_per_s": 6.5,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
