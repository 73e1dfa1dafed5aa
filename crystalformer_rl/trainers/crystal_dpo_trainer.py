"""Direct preference optimisation of CrystalFormer: a small ``transformers.Trainer`` subclass with TRL's vocabulary.

Why not TRL's ``DPOTrainer`` (1.16): it is built around text. ``_prepare_dataset`` tokenizes prompt / chosen /
rejected strings with a ``PreTrainedTokenizerBase``; log-probs come from a patched LM head
(``model(..., labels=, fused_lm_head=True).log_probs``) summed over completion tokens; ``_compute_loss`` also reads
per-token entropies and mean logits; reference log-probs are cached in the ``datasets`` cache by fingerprint.
A crystal's log-likelihood is one number (categorical + von Mises + Gaussian-mixture terms), so a subclass would
replace all four and keep only ``Trainer``. Its loss semantics also differ from the reference's: its sigmoid loss
ignores ``label_smoothing``, its IPO divides by the token count and its NLL term is a per-token mean. What it
adds beyond ``Trainer`` (PEFT references, padding-free batches, Liger kernels) does not apply to a 5M-parameter
non-text model. ``Trainer`` still brings Adam, clipping, accelerate (DDP / DeepSpeed), safetensors checkpoints
and resume; :class:`CrystalDPOConfig` keeps TRL's field names and this module its metric names
(``rewards/accuracies``, ``rewards/margins``, ``rewards/chosen``, ``rewards/rejected``, ``logps/*``).

The reference's semantics (reference doc §5.4): π_ref is the model as passed in; its log-likelihoods of every pair
are computed once, before training, and stored as dataset columns (``ref_chosen_logps``, ``ref_rejected_logps``),
so the loss never needs the frozen model. A pair is one dataset row, so shuffling keeps pairs aligned. The columns
are also written into every checkpoint and restored on resume, so a resumed run keeps the reference of the run it
continues even if handed another starting model. KL(πθ ‖ π_ref) is estimated at each evaluation on fresh policy
samples, the only use of the frozen copy (``kl_num_samples: 0`` drops it).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..modeling_crystalformer import CrystalFormerForCrystalGeneration
from ..tokenization import TOKEN_FIELDS, CrystalCollator, CrystalTokenizer
from ..utils import atomic_write_with
from .crystal_dpo_config import CrystalDPOConfig
from .crystal_rloo_trainer import prepare_policy
from .dpo_pairs import PAIR_COLUMNS, pair_tokens, pairs_dataset


logger = logging.get_logger(__name__)
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
REFERENCE_STATE_NAME = "dpo_reference_logps.safetensors"
METRICS = (
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, z, per-pair loss) of the reference's DPO; z = (log πθ(x_w) − log πθ(x_l)) − (log π_ref(x_w) −
    log π_ref(x_l)). The reference difference is taken in float64: log-likelihoods are large (~−100)."""
    ref_logratio = (ref_chosen_logps.double() - ref_rejected_logps.double()).to(chosen_logps.dtype)
    z = chosen_logps - rejected_logps - ref_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: use 'sigmoid' or 'ipo'")
    loss = losses.mean()
    if rpo_alpha:
        loss = loss - rpo_alpha * chosen_logps.mean()
    return loss, z, losses


def preference_sums(chosen, rejected, ref_chosen, ref_rejected, losses, beta: float) -> torch.Tensor:
    """Sums over pairs of the logged quantities (in ``METRICS`` order, then the DPO loss and the pair count)."""
    chosen, rejected = chosen.detach().double(), rejected.detach().double()
    chosen_rewards = beta * (chosen - ref_chosen.double())
    rejected_rewards = beta * (rejected - ref_rejected.double())
    margins = chosen_rewards - rejected_rewards
    columns = [(margins > 0).double(), margins, chosen_rewards, rejected_rewards, chosen, rejected]
    columns += [losses.detach().double(), torch.ones_like(chosen)]
    return torch.stack([c.sum() for c in columns])


class PairCollator:
    """Pads a batch of pair rows into one crystal batch, chosen crystals first then rejected (one forward pass),
    plus the reference log-likelihoods when the rows carry them."""

    def __init__(self, n_max: int = 21):
        self.n_max = n_max
        self.crystals = CrystalCollator(n_max=n_max, return_tensors="pt")

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        tokens = [pair_tokens(r, side, self.n_max) for side in ("chosen", "rejected") for r in rows]
        batch = self.crystals(tokens)
        for key in REF_COLUMNS:
            if rows and key in rows[0]:
                batch[key] = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
        return batch


def as_pair_dataset(pairs):
    """A ``datasets.Dataset`` of pairs from a Dataset, a DataFrame (``dpo_pairs`` output) or a list of rows."""
    import pandas as pd
    from datasets import Dataset

    if pairs is None:
        return None
    if isinstance(pairs, pd.DataFrame):
        pairs = pairs_dataset(pairs)
    elif isinstance(pairs, list):
        pairs = Dataset.from_list(pairs)
    if not isinstance(pairs, Dataset):
        raise TypeError(f"pairs must be a datasets.Dataset, a DataFrame or a list of rows, not {type(pairs)}")
    missing = [c for c in PAIR_COLUMNS if c not in pairs.column_names]
    if missing:
        raise ValueError(f"pair dataset lacks column(s) {missing}; build it with crystalformer_rl.trainers.dpo_pairs")
    if len(pairs) == 0:
        raise ValueError("no pairs")
    return pairs


@torch.no_grad()
def reference_logps(model, dataset, collator: PairCollator, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """log π_ref of every pair's chosen and rejected crystal, in eval mode (no dropout), float64."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            columns = dataset[start : start + batch_size]
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            batch = collator(rows)
            logp = model(**{k: batch[k].to(device) for k in TOKEN_FIELDS}, output_logits=False).logp
            c, r = logp.double().cpu().chunk(2)
            chosen.append(c.numpy())
            rejected.append(r.numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chosen), np.concatenate(rejected)


def with_reference_columns(dataset, chosen: Sequence[float], rejected: Sequence[float]):
    """The dataset with ``ref_chosen_logps`` / ``ref_rejected_logps`` set (replaced if present)."""
    present = [c for c in REF_COLUMNS if c in dataset.column_names]
    if present:
        dataset = dataset.remove_columns(present)
    dataset = dataset.add_column(REF_COLUMNS[0], [float(v) for v in chosen])
    return dataset.add_column(REF_COLUMNS[1], [float(v) for v in rejected])


class CrystalDPOTrainer(Trainer):
    """DPO of a CrystalFormer model on pairs of a preferred and a rejected crystal.

    Args:
        model: the policy (a model or a folder / Hub id for ``from_pretrained``); also π_ref unless ``ref_model``.
        args: :class:`CrystalDPOConfig`.
        train_dataset / eval_dataset: pairs, one per row (``chosen_G`` ... ``rejected_L``, as built by
            :mod:`crystalformer_rl.trainers.dpo_pairs`; a DataFrame works too). Rows that already carry
            ``ref_chosen_logps`` / ``ref_rejected_logps`` keep them; the others get them from π_ref here.
        ref_model: π_ref if not the policy as passed in.
    """

    _tag_names = ["crystalformer-rl", "dpo"]

    def __init__(
        self,
        model: CrystalFormerForCrystalGeneration | str,
        args: CrystalDPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        ref_model: CrystalFormerForCrystalGeneration | None = None,
        crystal_tokenizer: CrystalTokenizer | None = None,
        callbacks=None,
        optimizers=(None, None),
        **kwargs,
    ):
        args = args or CrystalDPOConfig(output_dir="crystalformer-dpo")
        model = prepare_policy(model, args)
        reference = ref_model if ref_model is not None else model
        n_max = model.config.n_max
        collator = PairCollator(n_max)
        self.crystal_tokenizer = crystal_tokenizer or CrystalTokenizer(n_max=n_max)

        # π_ref's log-likelihoods, once, before the policy moves (each process computes all of them: cheap).
        batch_size = args.precompute_ref_batch_size or args.per_device_eval_batch_size
        reference.to(args.device)
        train_dataset, eval_dataset = as_pair_dataset(train_dataset), as_pair_dataset(eval_dataset)
        if train_dataset is not None and not all(c in train_dataset.column_names for c in REF_COLUMNS):
            train_dataset = with_reference_columns(
                train_dataset, *reference_logps(reference, train_dataset, collator, batch_size, args.device)
            )
        if eval_dataset is not None and not all(c in eval_dataset.column_names for c in REF_COLUMNS):
            eval_dataset = with_reference_columns(
                eval_dataset, *reference_logps(reference, eval_dataset, collator, batch_size, args.device)
            )
        # Only the sampled KL estimate needs the frozen model; copy it before the policy trains.
        kl_reference = None
        if args.kl_num_samples:
            kl_reference = copy.deepcopy(reference) if reference is model else reference
            kl_reference.requires_grad_(False).eval()

        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        self.kl_reference = None
        if kl_reference is not None:
            if self.is_deepspeed_enabled:
                from trl.models import prepare_deepspeed

                self.kl_reference = prepare_deepspeed(kl_reference, self.accelerator)
            else:
                self.kl_reference = self.accelerator.prepare_model(kl_reference, evaluation_mode=True)
            source = train_dataset if train_dataset is not None else eval_dataset
            groups = source["chosen_G"] if source is not None else list(range(1, 231))
            rng = np.random.default_rng(args.seed)  # the pairs' space-group distribution, fixed for the run
            self._kl_space_groups = torch.as_tensor(rng.choice(np.asarray(groups), size=args.kl_num_samples))
        self._loss_kwargs = {
            "beta": args.beta,
            "loss_type": args.loss_type,
            "label_smoothing": args.label_smoothing,
            "rpo_alpha": args.rpo_alpha,
        }
        self._sums: torch.Tensor | None = None  # running sums of the training metrics, read when logging

    # --------------------------------------------------------------------------------------------- the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = model(**{k: inputs[k] for k in TOKEN_FIELDS}, output_logits=False).logp.float()
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        loss, _, losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, **self._loss_kwargs)
        if self.model.training:
            sums = preference_sums(chosen, rejected, ref_chosen, ref_rejected, losses, self.args.beta)
            self._sums = sums if self._sums is None else self._sums + sums
        if return_outputs:
            return loss, {"chosen_logps": chosen, "rejected_logps": rejected}
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._sums is not None and "loss" in logs:
            sums = self.accelerator.reduce(self._sums, reduction="sum")
            count = max(sums[-1].item(), 1.0)
            for name, value in zip(METRICS, (sums[: len(METRICS)] / count).tolist()):
                logs[name] = round(value, 6)
            self._sums = None
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss and preference metrics over all validation pairs, and the sampled KL(πθ ‖ π_ref)."""
        dataset = as_pair_dataset(eval_dataset) if eval_dataset is not None else self.eval_dataset
        if dataset is not None and not all(c in dataset.column_names for c in REF_COLUMNS):
            raise ValueError("evaluation pairs need reference log-probs: pass them as eval_dataset at construction")
        model = self.model
        was_training = model.training
        model.eval()
        metrics = {}
        try:
            if dataset is not None:
                rows = []
                for batch in self.get_eval_dataloader(dataset):
                    logp = model(**{k: batch[k] for k in TOKEN_FIELDS}, output_logits=False).logp.double()
                    chosen, rejected = logp.chunk(2)
                    stacked = torch.stack([chosen, rejected, batch[REF_COLUMNS[0]], batch[REF_COLUMNS[1]]], 1)
                    rows.append(self.accelerator.gather_for_metrics(stacked))
                chosen, rejected, ref_chosen, ref_rejected = torch.cat(rows).unbind(1)
                loss, _, losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, **self._loss_kwargs)
                sums = preference_sums(chosen, rejected, ref_chosen, ref_rejected, losses, self.args.beta)
                count = sums[-1].item()
                metrics[f"{metric_key_prefix}_loss"] = loss.item()
                for name, value in zip(METRICS, (sums[: len(METRICS)] / count).tolist()):
                    metrics[f"{metric_key_prefix}_{name}"] = value
                metrics[f"{metric_key_prefix}_pairs"] = int(count)
            if self.kl_reference is not None:
                metrics[f"{metric_key_prefix}_kl"] = self.sampled_kl()
        finally:
            model.train(was_training)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def sampled_kl(self) -> float:
        """E_πθ[log πθ(x) − log π_ref(x)] on ``kl_num_samples`` fresh policy samples (fixed seed and space groups,
        so the estimate is comparable across steps; a separate generator, so training's RNG is untouched)."""
        policy = self.accelerator.unwrap_model(self.model)
        device = self.accelerator.device
        with self.accelerator.autocast():  # as the forward (accelerate's autocast wrapper) under bf16
            out = policy.sample(space_group=self._kl_space_groups.to(device), seed=self.args.seed)
        tokens = {k: getattr(out, k).to(device) for k in TOKEN_FIELDS}
        tokens["XYZ"], tokens["L"] = tokens["XYZ"].float(), tokens["L"].float()
        logp = policy(**tokens, output_logits=False).logp.double()
        ref = self.kl_reference(**tokens, output_logits=False).logp.double()
        diff = logp - ref
        diff = diff[torch.isfinite(diff)]
        return diff.mean().item() if diff.numel() else math.nan

    # ------------------------------------------------------------------------------------------ checkpoints
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; on resume the reference log-probs come back from the checkpoint first."""
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
        if checkpoint is not None:
            self._restore_reference(checkpoint)
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from safetensors.torch import save_file

            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            tensors = {}
            for split, dataset in (("train", self.train_dataset), ("eval", self.eval_dataset)):
                if dataset is not None:
                    for side, column in zip(("chosen", "rejected"), REF_COLUMNS):
                        tensors[f"{split}/{side}"] = torch.tensor(dataset[column], dtype=torch.float64)
            atomic_write_with(lambda tmp: save_file(tensors, str(tmp)), folder / REFERENCE_STATE_NAME)
            self.crystal_tokenizer.save_pretrained(folder)

    def _restore_reference(self, checkpoint: str | os.PathLike) -> None:
        path = Path(checkpoint) / REFERENCE_STATE_NAME
        if not path.exists():
            logger.warning(f"{checkpoint} has no {REFERENCE_STATE_NAME}: the reference log-probs are recomputed")
            return
        from safetensors.torch import load_file

        saved = load_file(str(path))
        for split in ("train", "eval"):
            dataset = getattr(self, f"{split}_dataset")
            if dataset is None or f"{split}/chosen" not in saved:
                continue
            chosen, rejected = saved[f"{split}/chosen"].numpy(), saved[f"{split}/rejected"].numpy()
            if len(chosen) != len(dataset):
                raise ValueError(
                    f"{checkpoint} holds reference log-probs of {len(chosen)} {split} pairs, this run has "
                    f"{len(dataset)}: resume with the pairs of the run being resumed"
                )
            current = np.asarray(dataset[REF_COLUMNS[0]]), np.asarray(dataset[REF_COLUMNS[1]])
            if not (np.allclose(current[0], chosen, atol=1e-3) and np.allclose(current[1], rejected, atol=1e-3)):
                logger.warning(
                    f"the reference log-probs of the {split} pairs differ from those of the run being resumed "
                    "(another starting model?): the checkpoint's are used"
                )
            setattr(self, f"{split}_dataset", with_reference_columns(dataset, chosen, rejected))
