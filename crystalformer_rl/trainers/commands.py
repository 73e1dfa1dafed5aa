"""``crystalformer-rl pretrain`` and ``crystalformer-rl rl``: dataclass arguments (TRL's parser, so ``--config
file.yaml`` works and every field's help string is its CLI doc)."""

from __future__ import annotations

import importlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch


# Reward names usable in configs; anything else is an import path "package.module:callable_or_factory".
REWARDS = {
    "ehull": "crystalformer_rl.reward_models:EhullReward",
    "stability": "crystalformer_rl.reward_models:StabilityReward",
    "band_gap": "crystalformer_rl.reward_models:BandGapReward",
    "dielectric": "crystalformer_rl.reward_models:DielectricReward",
    "figure_of_merit": "crystalformer_rl.reward_models:FigureOfMeritReward",
}
MODEL_SIZES = {
    "paper": {},  # the Alex-20 configuration, 4,833,575 parameters
    "xs": {"num_layers": 2, "num_heads": 4, "key_size": 16, "model_size": 64, "embed_size": 32, "h0_size": 64},
    "s": {"num_layers": 4, "num_heads": 4, "key_size": 32, "model_size": 64, "embed_size": 32, "h0_size": 128},
    "m": {"num_layers": 4, "num_heads": 8, "key_size": 32, "model_size": 128, "embed_size": 32, "h0_size": 256},
}


def load_reward(name: str, **kwargs):
    """A reward callable by registry name or import path; classes and factories are called with ``kwargs``."""
    target = REWARDS.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown reward {name!r}: use one of {sorted(REWARDS)} or 'package.module:callable'")
    module, attr = target.split(":", 1)
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, type) or kwargs:
        obj = obj(**kwargs)
    return obj


def training_space_groups(source: str | None, model_name: str | None = None) -> list[int]:
    """Prompt rows: the space-group column of a prepared dataset / parquet (its empirical distribution), the
    model's shipped distribution ('default'), or a comma-separated list of groups."""
    from ..pretrained import space_group_distribution

    if source in (None, "", "model", "default"):
        counts = space_group_distribution(model_name)
        if counts is None:
            return list(range(1, 231))
        return [g for g, n in counts.items() for _ in range(n)]
    if all(part.strip().isdigit() for part in source.split(",")):
        return [int(part) for part in source.split(",")]
    from datasets import load_dataset

    path = Path(source)
    files = sorted(str(p) for p in path.glob("**/*.parquet")) if path.is_dir() else [str(path)]
    return [int(g) for g in load_dataset("parquet", data_files=files, split="train")["G"]]


# -------------------------------------------------------------------------------------------------- pretrain
@dataclass
class PretrainScriptArguments:
    train_data: str = field(
        default="data/corpus/train.parquet",
        metadata={"help": "Tokenized training data: a parquet file or a `prepare-data` output folder."},
    )
    validation_data: str | None = field(
        default="data/corpus/validation.parquet", metadata={"help": "Tokenized validation data (same forms)."}
    )
    model: str | None = field(default=None, metadata={"help": "Start from this model (folder, Hub id, .pkl)."})
    model_size: str = field(default="xs", metadata={"help": "Size of a new model: " + ", ".join(MODEL_SIZES)})
    streaming: bool = field(default=False, metadata={"help": "Stream the training data (needs --max_steps)."})


def _parquet_files(source: str) -> list[str]:
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.glob("**/shard-*.parquet")) or sorted(
            str(p) for p in path.glob("*.parquet")
        )
        if not files:
            raise FileNotFoundError(f"{path}: no parquet files")
        return files
    return [str(path)]


def run_pretrain(argv: list[str] | None = None):
    from datasets import load_dataset
    from trl import TrlParser

    from ..modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
    from ..pretrained import load_model
    from ..tokenization import CrystalTokenizer
    from .pretrain_config import CrystalPretrainConfig
    from .pretrain_trainer import CrystalPretrainer, plot_loss_curves

    parser = TrlParser((PretrainScriptArguments, CrystalPretrainConfig), prog="crystalformer-rl pretrain")
    script, config = parser.parse_args_and_config(argv)
    train = load_dataset(
        "parquet", data_files=_parquet_files(script.train_data), split="train", streaming=script.streaming
    )
    valid = None
    if script.validation_data:
        valid = load_dataset("parquet", data_files=_parquet_files(script.validation_data), split="train")
    if script.model:
        model = load_model(script.model)
    else:
        model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(**MODEL_SIZES[script.model_size]))
    trainer = CrystalPretrainer(model, config, train_dataset=train, eval_dataset=valid)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        CrystalTokenizer(n_max=model.config.n_max).save_pretrained(config.output_dir)
        if not script.streaming:
            counts = Counter(int(g) for g in train["G"])
            (Path(config.output_dir) / "space_group_distribution.json").write_text(json.dumps(counts, indent=0))
        plot_loss_curves(trainer.state.log_history, Path(config.output_dir) / "loss_curves.png")
    return trainer


# -------------------------------------------------------------------------------------------------------- rl
@dataclass
class RLScriptArguments:
    model: str | None = field(
        default=None,
        metadata={
            "help": "Base model: folder, Hub id or .pkl (default: the "
            "embedded model). It is also p_base, the KL anchor."
        },
    )
    rewards: list[str] = field(
        default_factory=lambda: ["ehull"],
        metadata={"help": "Reward names (" + ", ".join(REWARDS) + ") or import paths 'module:callable'."},
    )
    reward_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of keyword arguments per reward "
            'name, e.g. \'{"ehull": {"calculator": "chgnet-r2scan"}}\'.'
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Space groups to sample: 'default' (the model's "
            "training distribution), a parquet / prepared folder with a G column, or '225,221'."
        },
    )
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})
    push_to_hub_id: str | None = field(default=None, metadata={"help": "Push the fine-tuned model here at the end."})


def run_rl(argv: list[str] | None = None):
    from transformers.trainer_utils import get_last_checkpoint
    from trl import TrlParser

    from ..pretrained import SPACE_GROUP_FILE, load_model, space_group_distribution
    from .crystal_rloo_config import CrystalRLConfig
    from .crystal_rloo_trainer import CrystalRLOOTrainer, space_group_prompts
    from .rl_plots import plot_rl_curves

    parser = TrlParser((RLScriptArguments, CrystalRLConfig), prog="crystalformer-rl rl")
    script, config = parser.parse_args_and_config(argv)
    reward_kwargs = json.loads(script.reward_kwargs) if script.reward_kwargs else {}
    rewards = [load_reward(name, **reward_kwargs.get(name, {})) for name in script.rewards]
    model = load_model(script.model)
    groups = config.space_groups or training_space_groups(script.prompts, script.model)
    trainer = CrystalRLOOTrainer(model, rewards, args=config, train_dataset=space_group_prompts(groups))
    checkpoint = get_last_checkpoint(config.output_dir) if script.resume and os.path.isdir(config.output_dir) else None
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        trainer.create_model_card()
        counts = space_group_distribution(script.model)  # the fine-tuned model samples the same prompts
        if counts is not None:
            (Path(config.output_dir) / SPACE_GROUP_FILE).write_text(json.dumps(counts))
        plot_rl_curves(trainer.state.log_history, Path(config.output_dir) / "rl_curves.png")
        with open(Path(config.output_dir) / "log_history.json", "w") as f:
            json.dump(trainer.state.log_history, f, indent=1)
        if script.push_to_hub_id:
            trainer.accelerator.unwrap_model(trainer.model).push_to_hub(script.push_to_hub_id)
            trainer.crystal_tokenizer.push_to_hub(script.push_to_hub_id)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return trainer
