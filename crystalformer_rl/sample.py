"""``crystalformer-rl sample``: draw crystals and write them as CSV (token strings + log-likelihoods), CIFs and
extxyz, with the sampling time recorded for S.U.N.-per-second evaluation."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .pretrained import load_model, space_group_distribution
from .tokenization import ELEMENT_SYMBOLS, CrystalTokenizationError, CrystalTokens
from .utils import atomic_write_table, atomic_write_text


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
    return rng.integers(1, 231, size=num_samples)


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
                _atomic(lambda p, s=structure: s.to(filename=str(p), fmt="cif"), folder / f"{name}.cif")
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
        _atomic(lambda p: write(str(p), atoms, format="extxyz"), output_dir / "samples.extxyz")
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


def _atomic(write, path: Path) -> None:
    """For writers that only take a file name (pymatgen CIF, ASE extxyz)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


# argparse types: a bad value is reported as one line naming the option and the allowed range.
def _space_group(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a space-group number; use 1..230") from None
    if not 1 <= value <= 230:
        raise argparse.ArgumentTypeError(f"{value} is not a space group; use 1..230")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: use at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value}: use a number > 0")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value}: use a number in (0, 1]")
    return value


def _element(text: str) -> str:
    if text not in ELEMENT_SYMBOLS[1:]:
        raise argparse.ArgumentTypeError(f"{text!r} is not an element symbol (e.g. Li, Fe, O)")
    return text


def add_sample_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, Hub id, or official CrystalFormer .pkl (default: the embedded model)",
    )
    parser.add_argument(
        "--space-group",
        "-g",
        type=_space_group,
        nargs="+",
        default=None,
        help="space group(s), cycled through; default: the model's training distribution",
    )
    parser.add_argument("--num-samples", "-n", type=_positive_int, default=100)
    parser.add_argument(
        "--elements", "-e", type=_element, nargs="+", default=None, help="allowed elements, e.g. Li Fe P O"
    )
    parser.add_argument("--wyckoff", "-w", nargs="+", default=None, help="forced Wyckoff letters, e.g. a c f")
    parser.add_argument("--temperature", "-T", type=_positive_float, default=1.0)
    parser.add_argument("--first-atom-temperature", type=_positive_float, default=None)
    parser.add_argument("--top-p", type=_probability, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=_positive_int, default=500)
    parser.add_argument("--output-dir", "-o", default="samples")
    parser.add_argument("--format", nargs="+", default=["csv", "cif"], choices=["csv", "cif", "extxyz"])
    parser.epilog = (
        "examples:\n"
        "  crystalformer-rl sample -n 100 -o samples                  # training space-group distribution\n"
        "  crystalformer-rl sample -g 225 -n 20 -e La H -o lah        # La-H crystals in Fm-3m\n"
        "  crystalformer-rl sample -g 221 -w a b c -e Sr Ti O -n 10   # forced Wyckoff letters\n"
        "  crystalformer-rl sample --model epoch_005500.pkl -n 1000   # an official checkpoint"
    )


def run_sample(args) -> dict:
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    groups = draw_space_groups(args.num_samples, args.space_group, space_group_distribution(args.model), args.seed)
    frame, seconds = sample_to_frame(
        model,
        groups,
        batch_size=args.batch_size,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        elements=args.elements,
        wyckoff=args.wyckoff,
        first_atom_temperature=args.first_atom_temperature,
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "debug") and not k.startswith("_")}
    meta = write_samples(frame, Path(args.output_dir), args.format, seconds, settings)
    print(json.dumps({k: meta[k] for k in ("num_samples", "valid_tokens", "sampling_seconds", "files")}, indent=2))
    return meta
