"""Held-out NLL per term (total, W, A, XYZ, L; nats per crystal) of models on one validation split; prints JSON.

    python scripts/heldout_nll.py --data data/corpus-aflow/validation.parquet --models default runs/dm34/new-default

The same crystals for every model, as ``CrystalPretrainer.evaluate`` computes it during training (no dropout, each
crystal as the tokenizer writes it).
"""

import argparse
import json
import tempfile

import torch
from datasets import load_dataset

from crystalformer_rl.pretrained import load_model
from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", default=["default"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("parquet", data_files=args.data, split="train").select_columns(["G", "W", "A", "XYZ", "L"])
    report = {"data": args.data, "crystals": len(data)}
    for name in args.models:
        model = load_model(None if name == "default" else name)
        with tempfile.TemporaryDirectory() as tmp:
            config = CrystalPretrainConfig(output_dir=tmp, per_device_eval_batch_size=256, use_cpu=True, report_to="none")
            metrics = CrystalPretrainer(model, config, eval_dataset=data).evaluate()
        report[name] = {k: round(v, 4) for k, v in metrics.items() if k.startswith("eval_loss")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
