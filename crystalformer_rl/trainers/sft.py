"""The paper's supervised fine-tuning (SFT) baseline: sample, relax, keep E_hull < threshold, fine-tune.

    crystalformer-rl sft --num_samples 10000 --output_dir runs/sft --max_steps 1000 --learning_rate 1e-5

Paper (Appendix): 10k samples relaxed with Orb, kept when E_hull < 0.1 eV/atom, 55 epochs at batch 100, lr 1e-5.
The kept (relaxed) crystals are re-tokenized, written to ``output_dir/sft_data.parquet`` with their E_hull, and
the model is fine-tuned on them by maximum likelihood with :class:`CrystalPretrainer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class SFTScriptArguments:
    model: str | None = field(
        default=None, metadata={"help": "Model to sample from and fine-tune (default: the embedded model)."}
    )
    num_samples: int = field(default=10000, metadata={"help": "Crystals to sample (paper: 10,000)."})
    ehull_threshold: float = field(default=0.1, metadata={"help": "Keep crystals with E_hull below this (eV/atom)."})
    relax: bool = field(default=True, metadata={"help": "Relax with the potential before scoring (paper: yes)."})
    fmax: float = field(default=0.1, metadata={"help": "Relaxation force threshold (eV/Å)."})
    relax_steps: int = field(default=500, metadata={"help": "Maximum relaxation steps."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the sampler."})


def select_stable(structures, ehull_threshold, relax=True, fmax=0.1, steps=500, ehull_fn=None, relax_fn=None):
    """(kept structures, their E_hull, counts): relax, score, keep E_hull < threshold."""
    from ..evaluation.stability import compute_ehull, relax_structures

    if relax:
        structures, _, _ = relax_structures(structures, relax_fn=relax_fn, fmax=fmax, steps=steps)
    ehull, _ = compute_ehull(structures, ehull_fn=ehull_fn)
    kept = [(s, e) for s, e in zip(structures, ehull) if s is not None and e is not None and e < ehull_threshold]
    counts = {"sampled": len(structures), "scored": sum(e is not None for e in ehull), "kept": len(kept)}
    return [s for s, _ in kept], [e for _, e in kept], counts


def build_sft_dataset(model, script: SFTScriptArguments, output_dir: Path, ehull_fn=None, relax_fn=None):
    from datasets import Dataset

    from ..pretrained import space_group_distribution
    from ..sampling import draw_space_groups, sample_to_frame, structures_from_token_strings
    from ..tokenization import CrystalTokenizationError, CrystalTokenizer

    groups = draw_space_groups(script.num_samples, None, space_group_distribution(script.model), script.sample_seed)
    frame, _ = sample_to_frame(model, groups, seed=script.sample_seed)
    structures = structures_from_token_strings(frame["tokens"])
    kept, ehull, counts = select_stable(
        structures, script.ehull_threshold, script.relax, script.fmax, script.relax_steps, ehull_fn, relax_fn
    )
    tokenizer = CrystalTokenizer(n_max=model.config.n_max)
    rows = []
    for structure, e in zip(kept, ehull):
        try:
            rows.append({**tokenizer.encode(structure).as_dict(), "e_hull": e, "cif": structure.to(fmt="cif")})
        except CrystalTokenizationError:  # relaxation can raise the symmetry beyond what fits n_max, rarely
            counts["kept"] -= 1
    output_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(output_dir / "sft_data.parquet", index=False)
    (output_dir / "sft_selection.json").write_text(json.dumps(counts, indent=2))
    if not rows:
        raise RuntimeError(f"no sampled crystal has E_hull < {script.ehull_threshold} eV/atom: {counts}")
    return Dataset.from_list([{k: r[k] for k in ("G", "W", "A", "XYZ", "L")} for r in rows]), counts


def run_sft(argv: list[str] | None = None, ehull_fn=None, relax_fn=None):
    from trl import TrlParser

    from ..pretrained import load_model
    from ..tokenization import CrystalTokenizer
    from .pretrain_config import CrystalPretrainConfig
    from .pretrain_trainer import CrystalPretrainer

    parser = TrlParser((SFTScriptArguments, CrystalPretrainConfig), prog="crystalformer-rl sft")
    script, config = parser.parse_args_and_config(argv)
    model = load_model(script.model)
    dataset, counts = build_sft_dataset(model.eval(), script, Path(config.output_dir), ehull_fn, relax_fn)
    config.eval_strategy = "no"
    trainer = CrystalPretrainer(model, config, train_dataset=dataset)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        CrystalTokenizer(n_max=model.config.n_max).save_pretrained(config.output_dir)
    print(json.dumps(counts))
    return trainer
