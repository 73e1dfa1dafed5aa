"""What the training commands (and scripts of one's own) share: model sizes, prompt space groups, the novelty
reference saved beside a pretrained model."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback


MODEL_SIZES = {
    "paper": {},  # the Alex-20 configuration, 4,833,575 parameters
    "xs": {"num_layers": 2, "num_heads": 4, "key_size": 16, "model_size": 64, "embed_size": 32, "h0_size": 64},
    "s": {"num_layers": 4, "num_heads": 4, "key_size": 32, "model_size": 64, "embed_size": 32, "h0_size": 128},
    "m": {"num_layers": 4, "num_heads": 8, "key_size": 32, "model_size": 128, "embed_size": 32, "h0_size": 256},
}


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


def fill_prompts(groups: list[int], config) -> list[int]:
    """A short list of groups (``--prompts 225``) repeated until it fills a few sampled batches: the prompt dataset
    is drawn from in whole batches, so one row per group would give no batch at all. Repeating the list keeps the
    groups' proportions."""
    needed = 8 * config.per_device_train_batch_size * config.gradient_accumulation_steps
    return list(groups) * math.ceil(needed / len(groups)) if 0 < len(groups) < needed else list(groups)


def write_model_reference(train, output_dir: Path) -> Path:
    """Save the training crystals beside the model (``reference_corpus.csv.gz``, token strings, ~80 bytes each), so
    ``evaluate`` judges the novelty of its samples against what it was trained on."""
    from ..materials.matching import reference_table, write_reference_table
    from ..pretrained import REFERENCE_FILES

    arrays = train.select_columns(["G", "W", "A", "XYZ", "L"]).to_list()
    ids = train["id"] if "id" in train.column_names else None
    return write_reference_table(reference_table(arrays, ids=ids), Path(output_dir) / REFERENCE_FILES[0])


def write_base_model_files(base_model: str | None, folder: Path) -> None:
    """Copy what a fine-tuned model inherits from its base into ``folder``: the space-group distribution (the tuned
    model is prompted with the same groups, so ``sample --model folder`` draws them) and the novelty reference
    (novelty stays judged against the base model's training set)."""
    import json
    import shutil

    from ..pretrained import REFERENCE_FILES, SPACE_GROUP_FILE, model_reference, space_group_distribution

    folder.mkdir(parents=True, exist_ok=True)
    counts = space_group_distribution(base_model)
    if counts is not None:
        (folder / SPACE_GROUP_FILE).write_text(json.dumps(counts))
    reference = model_reference(base_model)
    if reference is not None:
        target = folder / (REFERENCE_FILES[1] if reference.suffix == ".parquet" else REFERENCE_FILES[0])
        target.unlink(missing_ok=True)
        # a copy, never a hard link: a run folder's reference is its own (editing it must not edit the package)
        shutil.copyfile(reference, target)


class BaseModelFilesCallback(TrainerCallback):
    """Writes :func:`write_base_model_files` into every checkpoint, so a checkpoint is a model folder like the final
    one (before, ``sample --model run/checkpoint-N`` silently drew space groups uniformly)."""

    def __init__(self, base_model: str | None):
        self.base_model = base_model

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_base_model_files(self.base_model, Path(args.output_dir) / f"checkpoint-{state.global_step}")


FINE_TUNED_MODEL_CARD = """---
library_name: crystalformer-rl
tags: [crystalformer, crystal-generation, materials, {tag}]
base_model: {base}
---

# {name}

CrystalFormer fine-tuned by {method} with [crystalformer-rl](https://github.com/crystalformer-rl/crystalformer-rl)
from `{base}`: {steps} optimizer steps, learning rate {lr:g}, {batch} crystals per device and step.
`log_history.json` beside the weights holds the training log.
"""

METHODS = {
    "dpo": "direct preference optimisation (DPO)",
    "sft": "supervised fine-tuning on its own stable samples (SFT)",
}


def finish_fine_tuning(trainer, base_model: str | None, push_to_hub_id: str | None = None, method: str = "rl"):
    """How every fine-tuning command (``rl``, ``dpo``, ``sft``) ends, after training: the model and its tokenizer
    config in ``output_dir``, a model card (the RL trainer's own; a short one for ``dpo`` and ``sft``), the base
    model's space-group distribution (the fine-tuned model samples the same prompts) and novelty reference (novelty
    stays judged against the base model's training set), ``log_history.json``, the optional Hub push; then the
    process-group teardown. Files are written by the main process only."""
    import json

    import torch

    from ..modeling_crystalformer.hub_crystalformer import upload_model_folder, write_model_card
    from ..tokenization import CrystalTokenizer

    output_dir = Path(trainer.args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = getattr(trainer, "crystal_tokenizer", None) or CrystalTokenizer(n_max=model.config.n_max)
        tokenizer.save_pretrained(output_dir)
        if method == "rl":
            trainer.create_model_card()
        else:
            card = FINE_TUNED_MODEL_CARD.format(
                name=output_dir.name,
                tag=method,
                method=METHODS[method],
                base=base_model or "CrystalFormer (the embedded crystalformer-rl default model)",
                steps=trainer.state.global_step,
                lr=trainer.args.learning_rate,
                batch=trainer.args.per_device_train_batch_size,
            )
            (output_dir / "README.md").write_text(card)
        write_model_card(model, output_dir)  # the Hub's metadata (a base_model that is a local path is dropped)
        write_base_model_files(base_model, output_dir)
        with open(output_dir / "log_history.json", "w") as f:
            json.dump(trainer.state.log_history, f, indent=1)
        if push_to_hub_id:  # the run's folder as it is: weights, remote code, tokenizer config, card, base files
            upload_model_folder(output_dir, push_to_hub_id)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return trainer
