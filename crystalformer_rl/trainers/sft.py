"""The paper's supervised fine-tuning (SFT) baseline: sample, relax, keep E_hull < threshold, fine-tune.

    crystalformer-rl sft --num_samples 10000 --output_dir runs/sft --max_steps 1000 --learning_rate 1e-5

The library side; the command (its arguments and ``run_sft``) is in :mod:`crystalformer_rl.commands.train`.

Paper (Appendix): 10k samples relaxed with Orb, kept when E_hull < 0.1 eV/atom, 55 epochs at batch 100, lr 1e-5.
Without relaxation the model is fine-tuned on the sampled tokens themselves (not on a rounded re-encoding); relaxed
crystals are tokenized again, since relaxation moves them. The kept crystals are written to
``output_dir/sft_data.parquet`` with their E_hull, and the model is fine-tuned on them by maximum likelihood with
:class:`CrystalPretrainer`. ``--data TABLE`` fine-tunes on crystals selected beforehand instead (e.g. the stable ones of
a resumable ``evaluate --relax`` run; ``scripts/fig5.py`` does this), without sampling or relaxing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..materials.ehull import compute_ehull, default_relax_fn
from ..materials.relaxation import relax_structures


def select_stable(structures, ehull_threshold, relax=True, fmax=0.1, steps=500, ehull_fn=None, relax_fn=None):
    """(indices of the kept crystals, their structures (relaxed if ``relax``), their E_hull, counts): relax, score,
    keep E_hull < threshold."""
    if relax:
        relax_fn = relax_fn or default_relax_fn(fmax=fmax, steps=steps)
        structures, _, _ = relax_structures(structures, relax_fn=relax_fn, fmax=fmax, steps=steps)
    ehull, _ = compute_ehull(structures, ehull_fn=ehull_fn)
    kept = [
        i for i, (s, e) in enumerate(zip(structures, ehull)) if s is not None and e is not None and e < ehull_threshold
    ]
    counts = {"sampled": len(structures), "scored": sum(e is not None for e in ehull), "kept": len(kept)}
    return kept, [structures[i] for i in kept], [ehull[i] for i in kept], counts


def _write_sft_data(rows: list[dict], counts: dict, output_dir: Path, why_empty: str):
    """Write the kept crystals and the counts to ``output_dir``; the token dataset the trainer fine-tunes on."""
    from datasets import Dataset

    from ..tokenization import TOKEN_FIELDS

    output_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(output_dir / "sft_data.parquet", index=False)
    (output_dir / "sft_selection.json").write_text(json.dumps(counts, indent=2))
    if not rows:
        raise RuntimeError(f"{why_empty}: {counts}")
    return Dataset.from_list([{k: r[k] for k in TOKEN_FIELDS} for r in rows])


def sft_dataset_from_crystals(source, output_dir: Path, *, n_max: int, column: str | None = None):
    """The SFT data from crystals selected elsewhere (e.g. a model's samples that are stable after
    ``evaluate --relax``, relaxed in resumable chunks): every crystal of ``source`` (a table with a ``cif`` /
    ``relaxed_cif`` / ``tokens`` column, a CIF folder, ...; see :func:`~crystalformer_rl.materials.io.load_crystals`)
    is tokenized and kept; one that does not build or encode is skipped and counted. Returns (dataset, counts)."""
    from ..materials.io import load_crystals
    from ..tokenization import CrystalTokenizationError, CrystalTokenizer

    loaded = load_crystals(source, column=column, progress=False)
    tokenizer = CrystalTokenizer(n_max=n_max)
    rows = []
    for structure in loaded.structures:
        if structure is None:
            continue
        try:
            rows.append({**tokenizer.encode(structure).as_dict(), "cif": structure.to(fmt="cif")})
        except CrystalTokenizationError:
            continue
    counts = {"source": str(source), "read": len(loaded.structures), "kept": len(rows)}
    counts["skipped"] = counts["read"] - counts["kept"]
    if not rows:
        raise ValueError(f"none of its {counts['read']} crystals could be built and tokenized")
    return _write_sft_data(rows, counts, output_dir, "no crystal kept"), counts


def build_sft_dataset(
    model,
    output_dir: Path,
    *,
    num_samples: int = 10000,
    ehull_threshold: float = 0.1,
    relax: bool = True,
    fmax: float = 0.1,
    relax_steps: int = 500,
    sample_seed: int = 0,
    space_groups_of: str | None = None,
    ehull_fn=None,
    relax_fn=None,
):
    """Sample ``num_samples`` crystals (space groups from the training distribution of the model folder
    ``space_groups_of``, the embedded model's if ``None``), keep those with E_hull < ``ehull_threshold``, and write
    them to ``output_dir``; returns (the kept crystals as a token dataset, counts)."""
    from ..pretrained import space_group_distribution
    from ..sampling import draw_space_groups, sample_crystals
    from ..tokenization import CrystalTokenizationError, CrystalTokenizer

    groups = draw_space_groups(num_samples, None, space_group_distribution(space_groups_of), sample_seed)
    crystals, _, _ = sample_crystals(model, groups, seed=sample_seed)
    structures = []
    for crystal in crystals:
        try:
            structures.append(crystal.to_structure())
        except CrystalTokenizationError:  # undecodable tokens: not scored, never kept
            structures.append(None)
    kept, kept_structures, ehull, counts = select_stable(
        structures, ehull_threshold, relax, fmax, relax_steps, ehull_fn, relax_fn
    )
    tokenizer = CrystalTokenizer(n_max=model.config.n_max)
    rows = []
    for index, structure, e in zip(kept, kept_structures, ehull):
        try:  # relaxed crystals moved, so they are tokenized again; unrelaxed ones keep their sampled tokens
            tokens = tokenizer.encode(structure) if relax else crystals[index]
        except CrystalTokenizationError:  # relaxation can raise the symmetry beyond what fits n_max, rarely
            counts["kept"] -= 1
            continue
        rows.append({**tokens.as_dict(), "e_hull": e, "cif": structure.to(fmt="cif")})
    why_empty = f"no sampled crystal has E_hull < {ehull_threshold} eV/atom"
    return _write_sft_data(rows, counts, output_dir, why_empty), counts
