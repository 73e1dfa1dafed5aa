"""Configuration of CrystalFormer DPO; its help strings are the ``crystalformer-rl dpo`` CLI docs.

The preference fields carry the names of TRL's ``DPOConfig`` (``beta``, ``loss_type``, ``label_smoothing``,
``rpo_alpha``, ``disable_dropout``, ``precompute_ref_batch_size``) with the reference's semantics, which differ
from TRL 1.16's in two places: label smoothing applies to the sigmoid loss (conservative DPO), and IPO is not
divided by a token count (a crystal's log-likelihood is one number).

`PairOptions` are the options of the pairs themselves (where they come from, how they are built); the command's
script arguments inherit them, and :func:`crystalformer_rl.trainers.dpo_pairs.build_pairs` takes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from ..errors import UsageError
from ..reward_models.registry import REWARDS
from .precision import PIN_MEMORY_HELP, pin_memory_only_on_cuda


LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class CrystalDPOConfig(TrainingArguments):
    r"""
    Direct preference optimisation of CrystalFormer on pairs of a preferred (x_w) and a rejected (x_l) crystal
    (reference doc §5.4).

    Per pair z = (log πθ(x_w) − log πθ(x_l)) − (log π_ref(x_w) − log π_ref(x_l)) with full-sequence
    log-likelihoods; loss −(1−s)·log σ(βz) − s·log σ(−βz) ('sigmoid', s = ``label_smoothing``) or
    (z − 1/(2β))² ('ipo'), averaged over pairs, minus γ·mean log πθ(x_w) (γ = ``rpo_alpha``). π_ref is the model
    as passed in, its log-likelihoods computed once before training. Defaults are the reference's: β = 0.1,
    Adam at 1e-5, gradient clip 1, no dropout, a constant learning rate.
    """

    # ---- preference loss (TRL DPOConfig names)
    beta: float = field(
        default=0.1,
        metadata={"help": "β: the larger, the closer the policy stays to the reference model (reference: 0.1)."},
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={
            "help": "'sigmoid' (DPO, with optional label smoothing) or 'ipo' ((z − 1/(2β))², no label smoothing).",
            "choices": list(LOSS_TYPES),
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "s in [0, 0.5): the assumed probability that a pair's preference is flipped (conservative "
            "DPO, as the reference); sigmoid loss only."
        },
    )
    rpo_alpha: float = field(
        default=0.0,
        metadata={
            "help": "γ: adds −γ·mean log πθ(x_w), a likelihood term on the preferred crystals (reference: 0). "
            "log πθ(x) is a sum over ~100 terms, so keep γ small (e.g. 1e-3)."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "No dropout in the policy, as the reference's DPO (is_train=False)."},
    )
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata={"help": "Pairs per batch when precomputing the reference log-likelihoods (default: eval batch)."},
    )
    kl_num_samples: int = field(
        default=256,
        metadata={
            "help": "Crystals sampled from the policy at every evaluation to estimate KL(πθ ‖ π_ref) = "
            "E_πθ[log πθ − log π_ref] (logged as `kl`, with a fixed seed). Keeps a frozen copy of the initial "
            "model for it; 0 disables the estimate and frees that copy (the loss never needs it)."
        },
    )

    # ---- reference defaults that differ from TrainingArguments'
    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate (reference: 1e-5)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Plain Adam, as the reference (no weight decay)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global gradient-norm clip (reference: 1)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (reference)."})
    per_device_train_batch_size: int = field(default=100, metadata={"help": "Pairs per batch and process."})
    per_device_eval_batch_size: int = field(default=200, metadata={"help": "Pairs per validation batch."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate on the validation pairs."})
    eval_steps: float = field(default=50, metadata={"help": "Validate every N optimizer steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint (safetensors) every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep this many checkpoints."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training preference metrics every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The pair collator picks its columns."})
    dataloader_pin_memory: bool = field(default=True, metadata={"help": PIN_MEMORY_HELP})

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, not {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), not {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only; set it to 0 with loss_type ipo")
        if self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, not {self.rpo_alpha}")
        if self.kl_num_samples < 0:
            raise ValueError(f"kl_num_samples must be >= 0, not {self.kl_num_samples}")
        super().__post_init__()
        pin_memory_only_on_cuda(self)


PAIR_SOURCES = ("sample", "relax")


@dataclass
class PairOptions:
    """Where the preference pairs come from and how they are built; the help strings are ``crystalformer-rl dpo``'s
    CLI docs. Together with the base model they are the pairs' settings: a run whose output folder holds pairs
    built with the same settings reuses them (:func:`cached_pairs`)."""

    pairs: str = field(
        default="sample",
        metadata={
            "help": "Where the pairs come from: 'sample' (the model's own samples scored by --reward; within a space "
            "group the i-th best is paired with the i-th worst when they differ by --margin), 'relax' (samples "
            "against their relaxed selves, chosen = relaxed), or a table (CSV / parquet / JSON file or folder, or a "
            "Hub dataset) with row-aligned --chosen_column / --rejected_column (CIF, structure dicts or token "
            "strings), or the pairs.parquet of an earlier run. Bad rows are skipped and reported."
        },
    )
    chosen_column: str = field(default="chosen", metadata={"help": "Column of the preferred crystals."})
    rejected_column: str = field(default="rejected", metadata={"help": "Column of the rejected crystals."})
    reward: str = field(
        default="ehull",
        metadata={
            "help": "Reward ranking the samples with --pairs sample (higher is better): "
            + ", ".join(REWARDS)
            + " or an import path 'module:callable'."
        },
    )
    reward_kwargs: str | None = field(
        default=None,
        metadata={
            "help": 'JSON object of keyword arguments for the reward, e.g. \'{"calculator": "chgnet-r2scan"}\'.'
        },
    )
    num_samples: int = field(default=2000, metadata={"help": "Crystals to sample when the pairs are built here."})
    margin: float = field(
        default=0.1,
        metadata={"help": "Smallest reward difference of a sampled pair (reward units: eV/atom for ehull)."},
    )
    failure_reward: float | None = field(
        default=None,
        metadata={
            "help": "Score samples the reward cannot score with this value, so they can be paired as rejected; "
            "default: leave them out (reported in pair_failures.csv)."
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Space groups to sample: 'default' (the model's training distribution), a parquet / prepared "
            "folder with a G column, or '225,221'."
        },
    )
    sample_seed: int = field(default=0, metadata={"help": "Seed of the sampler and of the space-group draw."})
    sample_batch_size: int = field(default=500, metadata={"help": "Crystals per sampling batch."})
    relax_fmax: float = field(default=0.1, metadata={"help": "--pairs relax: force threshold (eV/Å)."})
    relax_steps: int = field(default=500, metadata={"help": "--pairs relax: maximum relaxation steps."})

    def reward_keywords(self) -> dict:
        """``reward_kwargs`` as a dict (a one-line error naming the option when it is not a JSON object)."""
        try:
            value = json.loads(self.reward_kwargs) if self.reward_kwargs else {}
        except ValueError as exc:
            raise UsageError(f"--reward_kwargs: not a JSON object ({exc})") from None
        if not isinstance(value, dict):
            raise UsageError(f"--reward_kwargs {self.reward_kwargs}: not a JSON object")
        return value

    def settings(self, base_model: str | None) -> dict[str, Any]:
        """What decides the pairs (an edited table is a new table: its size and time are part of it)."""
        settings = {"model": base_model, **{f.name: getattr(self, f.name) for f in fields(PairOptions)}}
        source = Path(self.pairs)
        if source.is_file():
            settings["pairs_file"] = {"bytes": source.stat().st_size, "mtime": source.stat().st_mtime}
        return settings
