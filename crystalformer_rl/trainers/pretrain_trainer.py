"""Pretraining CrystalFormer with the HF ``Trainer``: the model's own NLL is the loss.

``Trainer`` brings Adam, gradient clipping, safetensors checkpoints, resume, accelerate (DDP / DeepSpeed) and
``datasets`` streaming; we add the crystal collator (padding per batch), the per-term training and validation
NLL (W, A, XYZ, L); its loss-curve plot is :func:`crystalformer_rl.trainers.plots.plot_loss_curves`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import has_length

from ..tokenization import CrystalCollator
from .plots import NLL_TERMS as TERMS
from .plots import plot_loss_curves
from .pretrain_config import CrystalPretrainConfig


__all__ = [
    "TERMS",
    "CrystalLengthGroupedSampler",
    "CrystalPretrainer",
    "PaddingCollator",
    "length_grouped_indices",
    "plot_loss_curves",
    "site_counts",
]


class CrystalPretrainer(Trainer):
    """``Trainer`` for CrystalFormer: rows with G, W, A, XYZ, L in, NLL per term logged."""

    def __init__(self, model, args: CrystalPretrainConfig, train_dataset=None, eval_dataset=None, **kwargs):
        n_max = model.config.n_max
        given = kwargs.pop("data_collator", None)
        collator = given or PaddingCollator(
            n_max, args.pad_to_n_max, random_representatives=args.random_representatives, seed=args.seed
        )
        # Validation sees each crystal as the tokenizer writes it, so its NLL compares across runs.
        self._eval_collator = given or PaddingCollator(n_max, args.pad_to_n_max)
        # Constant symmetry tables are buffers (some boolean, which gloo cannot broadcast): DDP skips them.
        model._ddp_params_and_buffers_to_ignore = [name for name, _ in model.named_buffers()]
        if args.compile_model:
            # Compile only the part after input validation: no graph breaks, a few shape-generic graphs.
            model._forward_checked = torch.compile(model._forward_checked, dynamic=True)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            **kwargs,
        )
        self._term_sums = None  # running (len(TERMS),) tensor: no host sync per step, read when logging
        self._term_count = 0

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches from the site counts (the `length_column_name` column, else counted from A):
        `Trainer` would look for token ids. Reshuffled every epoch."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None or not has_length(dataset):
            return super()._get_train_sampler(train_dataset)
        return CrystalLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=site_counts(dataset, self.args.length_column_name),
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, output_logits=False)
        if model.training:
            terms = torch.stack([outputs[term].detach().float() for term in TERMS])
            self._term_sums = terms if self._term_sums is None else self._term_sums + terms
            self._term_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._term_count and "loss" in logs:
            means = (self._term_sums / self._term_count).tolist()
            for term, value in zip(TERMS, means):
                logs[f"train_{term}"] = round(value, 4)
            self._term_sums = None
            self._term_count = 0
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean validation NLL per crystal, total and per term (weighted by batch size)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            return {}
        loader = self.accelerator.prepare(
            DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self._eval_collator)
        )
        model = self.model
        was_training = model.training
        model.eval()
        sums = torch.zeros(len(TERMS) + 2, device=self.args.device, dtype=torch.float64)
        for batch in loader:
            batch = self._prepare_inputs(batch)
            out = model(**batch, output_logits=False)
            sums += _weighted(out, batch["G"].shape[0], sums.device)
        model.train(was_training)
        sums = self.accelerator.reduce(sums, reduction="sum")
        count = max(sums[-1].item(), 1.0)
        metrics = {f"{metric_key_prefix}_loss": sums[0].item() / count}
        for i, term in enumerate(TERMS):
            metrics[f"{metric_key_prefix}_{term}"] = sums[i + 1].item() / count
        metrics[f"{metric_key_prefix}_crystals"] = int(count)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


MEGA_BATCHES = 50  # Trainer's cap on the batches sorted together


def length_grouped_indices(lengths: list[int], batch_size: int, generator=None) -> list[int]:
    """One epoch's order: a random permutation cut into mega-batches of up to 50 batches, each sorted by length and
    cut into batches, then the batches in random order.

    Trainer's ``get_length_grouped_indices`` shrinks the mega-batch to ``n // (4·batch)`` batches, so a small set
    (1,000 crystals at batch 100: 2 batches) is barely grouped, and keeps each mega-batch's batches in descending
    length. Here the set is cut into as few equal mega-batches of at most 50 batches as it takes (the whole set below
    50 batches) and the batch order is shuffled, so grouping works on SFT sets, DPO pairs and a user's few thousand crystals too."""
    n = len(lengths)
    groups = max(1, math.ceil(n / (MEGA_BATCHES * batch_size)))  # as few as the cap allows, of equal size
    mega = math.ceil(n / groups / batch_size) * batch_size
    permutation = torch.randperm(n, generator=generator).tolist()
    batches = []
    for start in range(0, n, mega):
        group = sorted(permutation[start : start + mega], key=lambda i: -lengths[i])
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    # Only full batches move: the DataLoader cuts this list every batch_size indices, so a short one stays last.
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in [*(batches[k] for k in order), *tail] for i in b]


class CrystalLengthGroupedSampler(LengthGroupedSampler):
    """``LengthGroupedSampler`` with :func:`length_grouped_indices`: grouping that also works on small sets."""

    def __iter__(self):
        return iter(length_grouped_indices(self.lengths, self.batch_size, generator=self.generator))


def site_counts(dataset, column: str = "num_sites") -> list[int]:
    """Occupied sites per crystal: the precomputed column when there is one, else the non-zero atom types."""
    if column in (getattr(dataset, "column_names", None) or ()):
        return [int(n) for n in dataset[column]]
    return [int(np.count_nonzero(np.asarray(row["A"]))) for row in dataset]


def _weighted(out, size: int, device) -> torch.Tensor:
    values = [out.loss, *(out[t] for t in TERMS)]
    return torch.stack([v.double() * size for v in values] + [torch.tensor(float(size), device=device).double()])


class PaddingCollator(CrystalCollator):
    """Crystal collator; ``pad_to_n_max`` reproduces the reference's fixed-length batches (for benchmarks)."""

    def __init__(self, n_max: int = 21, pad_to_n_max: bool = False, random_representatives=False, seed=None):
        super().__init__(n_max=n_max, return_tensors="pt", random_representatives=random_representatives, seed=seed)
        self.pad_to_n_max = pad_to_n_max

    def __call__(self, examples):
        batch = super().__call__(examples)
        if self.pad_to_n_max and batch["W"].shape[1] < self.n_max:
            extra = self.n_max - batch["W"].shape[1]
            batch["W"] = torch.nn.functional.pad(batch["W"], (0, extra))
            batch["A"] = torch.nn.functional.pad(batch["A"], (0, extra))
            batch["XYZ"] = torch.nn.functional.pad(batch["XYZ"], (0, 0, 0, extra))
        return batch
