"""``crystalformer-rl pretrain``, ``rl``, ``dpo`` and ``sft``: their script arguments (dataclasses, parsed with the
trainer's config; ``--config file.yaml`` works and every field's help string is its CLI doc) and run functions,
each called with the parsed dataclasses. The library behind them is :mod:`crystalformer_rl.trainers` (the
shared helpers and the common ending of a fine-tuning run in :mod:`crystalformer_rl.trainers.utils`, the DPO
pairs in :mod:`crystalformer_rl.trainers.dpo_pairs`)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DEFAULT_CORPUS_DIR, DEFAULT_TRAIN_DATA, DEFAULT_VALIDATION_DATA
from ..errors import UsageError
from ..reward_models.registry import REWARDS, load_reward
from ..trainers.crystal_dpo_config import PAIR_SOURCES, PairOptions
from ..trainers.utils import (
    MODEL_SIZES,
    BaseModelFilesCallback,
    fill_prompts,
    finish_fine_tuning,
    training_space_groups,
    write_model_reference,
)
from ..utils import is_hub_repo_id
from . import naming_input
from .outputs import TRAINING_OUTPUTS, check_output_dir


# -------------------------------------------------------------------------------------------------- pretrain
NO_DATA = ("", "none", "None", "null")


# The run-folder options every training command shares (one wording each).
OVERWRITE_OUTPUT_DIR_HELP = (
    "Start afresh in an --output_dir that holds an earlier run (its checkpoints and model are removed); without it, or "
    "--resume_from_checkpoint, such a folder is refused."
)
RESUME_HELP = "Resume from the last checkpoint in output_dir (as --resume_from_checkpoint last)."
PUSH_TO_HUB_ID_HELP = "Push the fine-tuned model here at the end."


@dataclass
class PretrainScriptArguments:
    train_data: str = field(
        default=DEFAULT_TRAIN_DATA,
        metadata={"help": "Tokenized training data: a parquet file or a `prepare-data` output folder."},
    )
    validation_data: str | None = field(
        default=DEFAULT_VALIDATION_DATA,
        metadata={"help": "Tokenized validation data (same forms); 'none' trains without validation."},
    )
    model: str | None = field(default=None, metadata={"help": "Start from this model (folder, Hub id, .pkl)."})
    model_size: str = field(default="xs", metadata={"help": "Size of a new model: " + ", ".join(MODEL_SIZES)})
    streaming: bool = field(default=False, metadata={"help": "Stream the training data (needs --max_steps)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_OUTPUT_DIR_HELP})


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


def _data_files(option: str, value: str, default: str) -> list[str]:
    """Parquet files of a data option; a missing one is a one-line error naming the option and the fix."""
    forms = "a parquet file or a `crystalformer-rl prepare-data` output folder"
    if not Path(value).exists():
        if value != default:
            fix = f"pass {forms}" + (", or --validation_data none" if option == "--validation_data" else "")
            raise UsageError(f"{option} {value}: no such file or folder; {fix}")
        if option == "--validation_data":
            raise UsageError(
                f"{option} {value}: no such file (the default); pass --validation_data PATH ({forms}), or "
                "--validation_data none to train without validation"
            )
        raise UsageError(
            f"{option} {value}: no such file (the default); build the corpus with "
            f"`python scripts/build_corpus.py --output {DEFAULT_CORPUS_DIR}`, or pass {option} PATH ({forms})"
        )
    try:
        return _parquet_files(value)
    except FileNotFoundError:
        raise UsageError(f"{option} {value}: no parquet files in the folder; pass {forms}") from None


def resolve_checkpoint(value: str | bool | None, output_dir: str, resume: bool = False) -> str | None:
    """The checkpoint to resume from: ``--resume_from_checkpoint PATH`` (``true``/``last``: the newest one in
    ``output_dir``), else the newest one when ``resume`` is set; ``None`` starts fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    text = str(value).strip() if value not in (None, False) else ""
    if text.lower() in ("", "false", "no", "none"):
        text = "last" if resume else ""
    if not text:
        return None
    if text.lower() in ("true", "yes", "last"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None and not resume:
            raise UsageError(
                f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}; pass a checkpoint "
                "folder or drop the option to start fresh"
            )
        return last
    if not os.path.isdir(text):
        raise UsageError(
            f"--resume_from_checkpoint {text}: no such checkpoint folder; pass a checkpoint-* folder of an earlier "
            "run, or 'last' for the newest one in --output_dir"
        )
    return text


def check_run_folder(script, config) -> None:
    """`TrainingArguments.overwrite_output_dir` semantics, before any work: an --output_dir holding an earlier run
    (checkpoints, a model, a training log) is refused in one line unless the run resumes it or overwrites it (its
    checkpoints and model are then removed, so `--resume_from_checkpoint last` can never pick up the earlier run)."""
    requested = str(config.resume_from_checkpoint or "").strip().lower() not in ("", "false", "no", "none")
    check_output_dir(
        config.output_dir,
        "--output_dir",
        TRAINING_OUTPUTS,
        overwrite=script.overwrite_output_dir,
        overwrite_flag="--overwrite_output_dir",
        resume=requested or getattr(script, "resume", False),
        resume_flag="--resume_from_checkpoint last",
    )


def finished_run(checkpoint: str | None, config, command: str) -> bool:
    """Whether ``checkpoint`` already reached ``--max_steps``: resuming it is then a no-op, with a one-line note
    (before, a repeated resume trained one step more and replaced the final model)."""
    if checkpoint is None or config.max_steps <= 0:
        return False
    state = Path(checkpoint) / "trainer_state.json"
    step = json.loads(state.read_text()).get("global_step", 0) if state.is_file() else 0
    if step < config.max_steps:
        return False
    print(
        f"crystalformer-rl {command}: {checkpoint} already reached --max_steps {config.max_steps} (step {step}); "
        "nothing to train, the run's files are left as they are",
        file=sys.stderr,
    )
    return True


def run_pretrain(script: PretrainScriptArguments, config):
    """``crystalformer-rl pretrain``: its parsed script arguments and `CrystalPretrainConfig`."""
    from datasets import load_dataset

    from ..modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
    from ..pretrained import load_model
    from ..tokenization import CrystalTokenizer
    from ..trainers.plots import plot_loss_curves
    from ..trainers.pretrain_trainer import CrystalPretrainer

    if not script.model and script.model_size not in MODEL_SIZES:
        raise UsageError(f"--model_size {script.model_size}: use one of {', '.join(MODEL_SIZES)}")
    check_run_folder(script, config)
    train_files = _data_files("--train_data", script.train_data, DEFAULT_TRAIN_DATA)
    valid_files = None
    if script.validation_data not in (None, *NO_DATA):
        valid_files = _data_files("--validation_data", script.validation_data, DEFAULT_VALIDATION_DATA)
    checkpoint = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)
    if finished_run(checkpoint, config, "pretrain"):
        return None
    with naming_input("--model", script.model):  # an unknown model fails before the data loads
        model = load_model(script.model) if script.model else None
    train = load_dataset("parquet", data_files=train_files, split="train", streaming=script.streaming)
    valid = load_dataset("parquet", data_files=valid_files, split="train") if valid_files else None
    if valid is None and config.eval_strategy != "no":  # Trainer refuses an eval strategy without eval data
        from transformers.trainer_utils import IntervalStrategy

        config.eval_strategy, config.do_eval = IntervalStrategy.NO, False
    if model is None:
        model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(**MODEL_SIZES[script.model_size]))
    trainer = CrystalPretrainer(model, config, train_dataset=train, eval_dataset=valid)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        CrystalTokenizer(n_max=model.config.n_max).save_pretrained(config.output_dir)
        if not script.streaming:
            counts = Counter(int(g) for g in train["G"])
            (Path(config.output_dir) / "space_group_distribution.json").write_text(json.dumps(counts, indent=0))
            write_model_reference(train, Path(config.output_dir))
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
    resume: bool = field(default=False, metadata={"help": RESUME_HELP})
    push_to_hub_id: str | None = field(default=None, metadata={"help": PUSH_TO_HUB_ID_HELP})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_OUTPUT_DIR_HELP})


def run_rl(script: RLScriptArguments, config):
    """``crystalformer-rl rl``: its parsed script arguments and `CrystalRLConfig`."""
    from ..pretrained import load_model
    from ..reward_models.base import share_caches
    from ..trainers.crystal_rloo_trainer import CrystalRLOOTrainer, space_group_prompts
    from ..trainers.plots import plot_rl_curves

    try:
        reward_kwargs = json.loads(script.reward_kwargs) if script.reward_kwargs else {}
    except ValueError as exc:
        raise UsageError(f"--reward_kwargs: not a JSON object ({exc})") from None
    check_run_folder(script, config)
    checkpoint = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, resume=script.resume)
    if finished_run(checkpoint, config, "rl"):
        return None
    rewards = []
    for name in script.rewards:  # a misspelt reward fails before the model loads
        with naming_input("--rewards", name):
            rewards.append(load_reward(name, **reward_kwargs.get(name, {})))
    with naming_input("--model", script.model or "(the embedded model)"):
        model = load_model(script.model)
    for reward, shared in share_caches(rewards):
        print(f"rewards: {reward.name} shares {shared.name}'s cache (the same values, computed once per crystal)")
    groups = fill_prompts(config.space_groups or training_space_groups(script.prompts, script.model), config)
    trainer = CrystalRLOOTrainer(model, rewards, args=config, train_dataset=space_group_prompts(groups))
    trainer.add_callback(BaseModelFilesCallback(script.model))
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.is_world_process_zero():
        plot_rl_curves(trainer.state.log_history, Path(config.output_dir) / "rl_curves.png")
    return finish_fine_tuning(trainer, script.model, script.push_to_hub_id, method="rl")


# ------------------------------------------------------------------------------------------------------- dpo
@dataclass
class DPOScriptArguments(PairOptions):
    """The script arguments of ``crystalformer-rl dpo``: the pair options (:class:`PairOptions`), the base model,
    the validation share, resume and Hub push."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Base model: folder, Hub id or .pkl (default: the embedded model). It is also π_ref, and it "
            "samples the crystals when the pairs are built here."
        },
    )
    validation_fraction: float = field(
        default=0.2, metadata={"help": "Share of the pairs held out for validation after a shuffle (reference: 0.2)."}
    )
    resume: bool = field(default=False, metadata={"help": RESUME_HELP})
    push_to_hub_id: str | None = field(default=None, metadata={"help": PUSH_TO_HUB_ID_HELP})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_OUTPUT_DIR_HELP})


def run_dpo(script: DPOScriptArguments, config):
    """``crystalformer-rl dpo``: its parsed script arguments and `CrystalDPOConfig`."""
    from accelerate import PartialState
    from transformers.trainer_utils import IntervalStrategy

    from ..pretrained import load_model
    from ..trainers.crystal_dpo_trainer import CrystalDPOTrainer
    from ..trainers.dpo_pairs import build_pairs, cached_pairs, pairs_dataset, split_pairs, write_pairs

    if not 0.0 <= script.validation_fraction < 1.0:
        raise UsageError(f"--validation_fraction {script.validation_fraction}: use a value in [0, 1)")
    if script.pairs not in PAIR_SOURCES and not Path(script.pairs).exists() and not is_hub_repo_id(script.pairs):
        raise UsageError(
            f"--pairs {script.pairs}: no such file or folder; pass 'sample', 'relax', a CSV / parquet / JSON table "
            "with chosen and rejected columns, or a Hub dataset id"
        )
    script.reward_keywords()  # a bad --reward_kwargs fails before the model loads
    check_run_folder(script, config)
    checkpoint = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, resume=script.resume)
    if finished_run(checkpoint, config, "dpo"):
        return None
    with naming_input("--model", script.model or "(the embedded model)"):
        model = load_model(script.model)

    # The main process builds (or reuses) the pairs and writes them; the others read what it wrote.
    output_dir, state = Path(config.output_dir), PartialState()
    with state.main_process_first():
        pairs = cached_pairs(output_dir, script.settings(script.model))
        if pairs is None:
            pairs, failures, summary = build_pairs(script, model, script.model, device=config.device)
            if state.is_main_process:
                write_pairs(pairs, failures, output_dir, summary)
                print(json.dumps({k: v for k, v in summary.items() if k != "settings"}))
    if len(pairs) < 2:
        raise UsageError(
            f"only {len(pairs)} preference pair(s) (see {output_dir / 'pair_failures.csv'}): sample more "
            "(--num_samples), lower --margin, or pass a table with --pairs"
        )
    train, valid = split_pairs(pairs_dataset(pairs), script.validation_fraction, seed=config.seed)
    if valid is None and config.eval_strategy != "no":  # Trainer refuses an eval strategy without eval data
        config.eval_strategy, config.do_eval = IntervalStrategy.NO, False

    trainer = CrystalDPOTrainer(model, config, train_dataset=train, eval_dataset=valid)
    trainer.add_callback(BaseModelFilesCallback(script.model))
    trainer.train(resume_from_checkpoint=checkpoint)
    return finish_fine_tuning(trainer, script.model, script.push_to_hub_id, method="dpo")


# ------------------------------------------------------------------------------------------------------- sft
@dataclass
class SFTScriptArguments:
    model: str | None = field(
        default=None, metadata={"help": "Model to sample from and fine-tune (default: the embedded model)."}
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune on these crystals instead of sampling and relaxing (a table with a cif / relaxed_cif "
            "/ tokens column, a CIF folder, ...), e.g. the stable rows of a resumable `evaluate --relax`; every "
            "crystal that builds and encodes is kept. The sampling and relaxation options are then unused."
        },
    )
    data_column: str | None = field(default=None, metadata={"help": "The crystal column of --data (default: auto)."})
    num_samples: int = field(default=10000, metadata={"help": "Crystals to sample (paper: 10,000)."})
    ehull_threshold: float = field(default=0.1, metadata={"help": "Keep crystals with E_hull below this (eV/atom)."})
    relax: bool = field(
        default=True,
        metadata={
            "help": "Relax with the potential before scoring (paper: yes); without it the sampled tokens "
            "themselves are fine-tuned on."
        },
    )
    fmax: float = field(default=0.1, metadata={"help": "Relaxation force threshold (eV/Å)."})
    relax_steps: int = field(default=500, metadata={"help": "Maximum relaxation steps."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the sampler."})
    push_to_hub_id: str | None = field(default=None, metadata={"help": PUSH_TO_HUB_ID_HELP})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_OUTPUT_DIR_HELP})


def run_sft(script: SFTScriptArguments, config, ehull_fn=None, relax_fn=None):
    """``crystalformer-rl sft``: its parsed script arguments and `CrystalPretrainConfig`; ``ehull_fn`` /
    ``relax_fn`` replace the potential (tests, other potentials). It ends as ``rl`` and ``dpo`` do
    (:func:`~crystalformer_rl.trainers.utils.finish_fine_tuning`)."""
    from ..pretrained import load_model
    from ..trainers.pretrain_trainer import CrystalPretrainer
    from ..trainers.sft import build_sft_dataset, sft_dataset_from_crystals

    if script.data is not None and not Path(script.data).exists():
        raise UsageError(f"--data {script.data}: no such file or folder")
    check_run_folder(script, config)
    checkpoint = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)
    if finished_run(checkpoint, config, "sft"):
        return None
    with naming_input("--model", script.model or "(the embedded model)"):
        model = load_model(script.model)
    if script.data is not None:
        with naming_input("--data", script.data):
            dataset, counts = sft_dataset_from_crystals(
                script.data, Path(config.output_dir), n_max=model.config.n_max, column=script.data_column
            )
    else:
        dataset, counts = build_sft_dataset(
            model.eval(),
            Path(config.output_dir),
            num_samples=script.num_samples,
            ehull_threshold=script.ehull_threshold,
            relax=script.relax,
            fmax=script.fmax,
            relax_steps=script.relax_steps,
            sample_seed=script.sample_seed,
            space_groups_of=script.model,
            ehull_fn=ehull_fn,
            relax_fn=relax_fn,
        )
    config.eval_strategy = "no"
    trainer = CrystalPretrainer(model, config, train_dataset=dataset)
    trainer.train(resume_from_checkpoint=checkpoint)
    print(json.dumps(counts))
    return finish_fine_tuning(trainer, script.model, script.push_to_hub_id, method="sft")
