"""Sampled crystals as a table and as files: the library side of ``crystalformer-rl sample``, also used by the
trainers (SFT).

:func:`draw_space_groups` picks the space group of each crystal, :func:`sample_to_frame` samples a model into a
table of token strings and log-likelihoods, :func:`structures_from_token_strings` turns the token strings into
pymatgen structures and :func:`write_samples` writes CSV, CIFs and extxyz (atomically) with the sampling time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .crystallography import NUM_SPACE_GROUPS
from .tokenization import CrystalTokenizationError, CrystalTokens
from .utils import atomic_write_table, atomic_write_text, atomic_write_with


__all__ = ["draw_space_groups", "sample_to_frame", "structures_from_token_strings", "write_samples"]


def draw_space_groups(
    num_samples: int, space_groups: list[int] | None, distribution: dict[int, int] | None, seed: int
) -> np.ndarray:
    """Given groups are cycled through; otherwise draw from the training distribution (uniform if unknown)."""
    if space_groups:
        return np.resize(np.asarray(space_groups, dtype=np.int64), num_samples)
    rng = np.random.default_rng(seed)
    if distribution:
        groups = np.array(sorted(distribution))
        weights = np.array([distribution[g] for g in groups], dtype=float)
        return rng.choice(groups, size=num_samples, p=weights / weights.sum())
    return rng.integers(1, NUM_SPACE_GROUPS + 1, size=num_samples)


def sample_to_frame(model, space_groups: np.ndarray, batch_size: int = 500, progress: bool = True, **kwargs):
    """Sample one crystal per entry of ``space_groups``; returns (table, seconds spent sampling)."""
    rows, seconds = [], 0.0
    seed = kwargs.pop("seed", None)
    bar = tqdm(total=len(space_groups), desc="sampling", unit="crystal", disable=not progress)
    for index, start in enumerate(range(0, len(space_groups), batch_size)):
        groups = torch.as_tensor(space_groups[start : start + batch_size])
        tic = time.perf_counter()
        with torch.no_grad():
            out = model.sample(space_group=groups, seed=None if seed is None else seed + index, **kwargs)
        seconds += time.perf_counter() - tic
        arrays = {k: getattr(out, k).detach().cpu().numpy() for k in ("G", "W", "A", "XYZ", "L")}
        terms = {k: getattr(out, k).detach().cpu().numpy() for k in ("logp", "logp_w", "logp_a", "logp_xyz", "logp_l")}
        for i in range(len(groups)):
            tokens = CrystalTokens(
                int(arrays["G"][i]), arrays["W"][i], arrays["A"][i], arrays["XYZ"][i], arrays["L"][i]
            )
            row = {"id": f"sample-{start + i:06d}", "G": tokens.G, "num_sites": tokens.num_sites}
            try:
                row["tokens"] = tokens.to_string()
                row["formula"] = tokens.formula
                row["num_atoms"] = tokens.num_atoms
            except (CrystalTokenizationError, ValueError, IndexError) as exc:
                row["tokens"], row["error"] = None, str(exc)
            row.update({k: float(v[i]) for k, v in terms.items()})
            rows.append(row)
        bar.update(len(groups))
    bar.close()
    if not rows:  # nothing sampled: still the columns every writer and reader expects
        return pd.DataFrame(columns=["id", "G", "num_sites", "tokens", "formula", "num_atoms", "logp"]), seconds
    return pd.DataFrame(rows), seconds


def structures_from_token_strings(texts) -> list:
    """pymatgen structures of token strings; ``None`` where a string is missing or is no valid crystal."""
    structures = []
    for text in texts:
        try:
            structures.append(CrystalTokens.from_string(text).to_structure() if isinstance(text, str) else None)
        except CrystalTokenizationError:
            structures.append(None)
    return structures


def write_samples(frame: pd.DataFrame, output_dir: Path, formats: list[str], seconds: float, settings: dict) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    structures = structures_from_token_strings(frame["tokens"])
    frame = frame.assign(valid_tokens=[s is not None for s in structures])
    written = {}
    if "csv" in formats:
        atomic_write_table(frame, output_dir / "samples.csv")
        written["csv"] = str(output_dir / "samples.csv")
    if "cif" in formats:
        folder = output_dir / "cifs"
        folder.mkdir(exist_ok=True)
        for name, structure in zip(frame["id"], structures):
            if structure is not None:
                atomic_write_with(lambda p, s=structure: s.to(filename=str(p), fmt="cif"), folder / f"{name}.cif")
        written["cif"] = str(folder)
    if "extxyz" in formats:
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = []
        for name, structure in zip(frame["id"], structures):
            if structure is not None:
                a = AseAtomsAdaptor.get_atoms(structure)
                a.info["id"] = name
                atoms.append(a)
        atomic_write_with(lambda p: write(str(p), atoms, format="extxyz"), output_dir / "samples.extxyz")
        written["extxyz"] = str(output_dir / "samples.extxyz")
    meta = {
        **settings,
        "num_samples": len(frame),
        "sampling_seconds": seconds,
        "crystals_per_second": len(frame) / seconds if seconds else None,
        "valid_tokens": int(frame["valid_tokens"].sum()),
        "files": written,
    }
    if "csv" in formats:
        atomic_write_text(json.dumps(meta, indent=2), output_dir / "samples.csv.meta.json")
    atomic_write_text(json.dumps(meta, indent=2), output_dir / "sampling.json")
    return meta
