"""Sampled crystals as a table and as files: the library side of ``crystalformer-rl sample``, also used by the
trainers (SFT).

:func:`draw_space_groups` picks the space group of each crystal, :func:`sample_crystals` samples a model into
``CrystalTokens`` and log-likelihoods, :func:`sample_to_frame` makes those a table of token strings,
:func:`structures_from_token_strings` turns token strings into pymatgen structures and :func:`write_samples`
writes CSV, CIFs and extxyz (atomically) with the sampling time. :func:`crystal_batch_reward` makes a reward over
crystals (a TRL reward callable) the batch reward ``model.mcmc`` takes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .crystallography import NUM_SPACE_GROUPS
from .tokenization import CrystalTokenizationError, CrystalTokens
from .utils import atomic_write_table, atomic_write_text, atomic_write_with


__all__ = [
    "crystal_batch_reward",
    "crystals_to_frame",
    "draw_space_groups",
    "sample_crystals",
    "sample_to_frame",
    "SampleWriter",
    "available_memory",
    "iter_sample_batches",
    "sampling_memory_estimate",
    "structures_from_token_strings",
    "write_samples",
]


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


LOGP_KEYS = ("logp", "logp_w", "logp_a", "logp_xyz", "logp_l")


def iter_sample_batches(
    model, space_groups: Sequence[int] | np.ndarray, batch_size: int = 500, progress: bool = True, **kwargs
) -> Iterator[tuple[list[CrystalTokens], dict[str, np.ndarray], float]]:
    """:func:`sample_crystals` one batch at a time: yields (the batch's crystals, their log-likelihood terms,
    seconds spent in the sampler on it), so a caller can write each batch as it comes."""
    seed = kwargs.pop("seed", None)
    bar = tqdm(total=len(space_groups), desc="sampling", unit="crystal", disable=not progress)
    try:
        for index, start in enumerate(range(0, len(space_groups), batch_size)):
            groups = torch.as_tensor(np.asarray(space_groups[start : start + batch_size], dtype=np.int64))
            tic = time.perf_counter()
            with torch.no_grad():
                out = model.sample(space_group=groups, seed=None if seed is None else seed + index, **kwargs)
            seconds = time.perf_counter() - tic
            terms = {k: getattr(out, k).detach().cpu().numpy() for k in LOGP_KEYS}
            bar.update(len(groups))
            yield CrystalTokens.from_sampler_output(out), terms, seconds
    finally:
        bar.close()


def sample_crystals(
    model, space_groups: Sequence[int] | np.ndarray, batch_size: int = 500, progress: bool = True, **kwargs
) -> tuple[list[CrystalTokens], dict[str, np.ndarray], float]:
    """Sample one crystal per entry of ``space_groups`` in batches (batch ``i`` seeded ``seed + i``).

    Returns (the crystals, their log-likelihood terms ``logp, logp_w, logp_a, logp_xyz, logp_l`` as arrays,
    seconds spent in the sampler). Other keyword arguments go to ``model.sample``.
    """
    crystals: list[CrystalTokens] = []
    terms: dict[str, list[np.ndarray]] = {k: [] for k in LOGP_KEYS}
    seconds = 0.0
    for batch, batch_terms, batch_seconds in iter_sample_batches(model, space_groups, batch_size, progress, **kwargs):
        crystals += batch
        seconds += batch_seconds
        for k in LOGP_KEYS:
            terms[k].append(batch_terms[k])
    logps = {k: np.concatenate(v) if v else np.zeros(0) for k, v in terms.items()}
    return crystals, logps, seconds


def crystal_batch_reward(reward):
    """``model.mcmc``'s reward from a reward over crystals: a TRL reward callable ``reward(prompts, completions,
    **kwargs) -> list[float | None]`` such as ``reward_models.load_reward("ehull")`` or the RL trainer's; it is
    called with the space groups as prompts, the batch's ``CrystalTokens`` as completions and no completion ids.

    A stateful reward (one with a ``state_dict``, such as the S.U.N. reward's archive of crystals seen) is refused:
    it would change with every proposal it scores, rejected ones too, so the chain would have no fixed target."""
    if hasattr(reward, "state_dict"):
        name = getattr(reward, "name", None) or type(reward).__name__
        raise ValueError(
            f"reward {name}: stateful (it remembers the crystals it scores), so MCMC would have no fixed target; "
            "use a stateless reward (e.g. ehull)"
        )

    def batch_reward(batch) -> list[float | None]:
        crystals = CrystalTokens.from_sampler_output(batch)
        prompts = [c.G for c in crystals]
        return list(reward(prompts=prompts, completions=crystals, completion_ids=[None] * len(crystals)))

    batch_reward.__name__ = getattr(reward, "name", None) or getattr(reward, "__name__", "reward")
    return batch_reward


#: bytes the sampler holds per crystal of a batch, measured on the embedded model (2 layers x 64: ~50 KB at
#: batch sizes 2,000-8,000); scaled by layers x hidden size for larger models
SAMPLER_BYTES_PER_CRYSTAL = 60_000


def sampling_memory_estimate(config, batch_size: int) -> int:
    """A rough upper estimate of the memory (bytes) ``model.sample`` takes for one batch of ``batch_size``."""
    layers = getattr(config, "num_hidden_layers", 2) or 2
    hidden = getattr(config, "hidden_size", 64) or 64
    return int(batch_size * SAMPLER_BYTES_PER_CRYSTAL * max(1.0, layers * hidden / 128))


def available_memory(device) -> int | None:
    """Free memory of ``device`` in bytes (the GPU's, or the machine's available RAM); ``None`` when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def sample_to_frame(model, space_groups: np.ndarray, batch_size: int = 500, progress: bool = True, **kwargs):
    """Sample one crystal per entry of ``space_groups``; returns (table, seconds spent sampling).

    The table's rows are :func:`sample_crystals`' crystals, in order: ``sample-000000``, ``sample-000001``, ...
    """
    crystals, logps, seconds = sample_crystals(model, space_groups, batch_size, progress, **kwargs)
    return crystals_to_frame(crystals, logps), seconds


def crystals_to_frame(crystals: list[CrystalTokens], logps: dict[str, np.ndarray], first: int = 0) -> pd.DataFrame:
    """The samples table of :func:`sample_crystals`' output: id, G, token string, formula, log-likelihood terms
    (ids from ``sample-{first:06d}``: a batch's rows continue the earlier batches')."""
    if not crystals:  # nothing sampled: still the columns every writer and reader expects
        return pd.DataFrame(columns=["id", "G", "num_sites", "tokens", "formula", "num_atoms", "logp"])
    rows = []
    for i, tokens in enumerate(crystals):
        row = {"id": f"sample-{first + i:06d}", "G": tokens.G, "num_sites": tokens.num_sites}
        try:
            row["tokens"] = tokens.to_string()
            row["formula"] = tokens.formula
            row["num_atoms"] = tokens.num_atoms
        except (CrystalTokenizationError, ValueError, IndexError) as exc:
            row["tokens"], row["error"] = None, str(exc)
        row.update({k: float(v[i]) for k, v in logps.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def structures_from_token_strings(texts) -> list:
    """pymatgen structures of token strings; ``None`` where a string is missing or is no valid crystal."""
    return [_structure_or_none(text) if isinstance(text, str) else None for text in texts]


def _structure_or_none(crystal: CrystalTokens | str):
    """The structure of tokens or of a token string, ``None`` if it is no valid crystal."""
    try:
        return (CrystalTokens.from_string(crystal) if isinstance(crystal, str) else crystal).to_structure()
    except CrystalTokenizationError:
        return None


def _ase_atoms(names, structures) -> list:
    """ASE ``Atoms`` of the decoded structures, each with its row id in ``info["id"]``."""
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = []
    for name, structure in zip(names, structures):
        if structure is not None:
            a = AseAtomsAdaptor.get_atoms(structure)
            a.info["id"] = name
            atoms.append(a)
    return atoms


def write_samples(
    frame: pd.DataFrame,
    output_dir: Path,
    formats: list[str],
    seconds: float,
    settings: dict,
    crystals: list[CrystalTokens] | None = None,
) -> dict:
    """Write ``samples.csv``, ``cifs/`` and ``samples.extxyz`` (as ``formats`` asks) and the sampling metadata.

    With ``crystals`` (the rows of ``frame``, e.g. from :func:`sample_crystals`) the files hold the sampled tokens
    themselves; without, the table's token strings (6 decimals) are decoded. A row is ``valid_tokens`` when it has
    a token string and its tokens decode.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if crystals is None:
        structures = structures_from_token_strings(frame["tokens"])
    else:
        if len(crystals) != len(frame):
            raise ValueError(f"{len(crystals)} crystals for a table of {len(frame)} rows")
        structures = [
            _structure_or_none(c) if isinstance(text, str) else None for c, text in zip(crystals, frame["tokens"])
        ]
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

        atoms = _ase_atoms(frame["id"], structures)
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


SAMPLE_COLUMNS = ["id", "G", "num_sites", "tokens", "formula", "num_atoms", *LOGP_KEYS, "error", "valid_tokens"]


class SampleWriter:
    """The files of :func:`write_samples`, written batch by batch as the crystals come (``samples.csv`` appended,
    one CIF per crystal, ``samples.extxyz`` appended), so an interrupted run keeps every finished batch;
    :meth:`finish` writes the metadata (``interrupted=True`` when the run stopped early)."""

    def __init__(self, output_dir: str | Path, formats: Sequence[str], settings: dict):
        self.output_dir, self.formats, self.settings = Path(output_dir), list(formats), settings
        self.num_samples, self.valid_tokens, self.seconds = 0, 0, 0.0
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if "cif" in self.formats:
            (self.output_dir / "cifs").mkdir(exist_ok=True)

    def files(self) -> dict[str, str]:
        names = {"csv": "samples.csv", "cif": "cifs", "extxyz": "samples.extxyz"}
        return {fmt: str(self.output_dir / names[fmt]) for fmt in ("csv", "cif", "extxyz") if fmt in self.formats}

    def add(self, crystals: list[CrystalTokens], logps: dict[str, np.ndarray], seconds: float) -> None:
        """Write one batch (the rows continue the earlier batches' ids)."""
        frame = crystals_to_frame(crystals, logps, first=self.num_samples)
        structures = [
            _structure_or_none(c) if isinstance(text, str) else None for c, text in zip(crystals, frame["tokens"])
        ]
        frame = frame.assign(valid_tokens=[s is not None for s in structures]).reindex(columns=SAMPLE_COLUMNS)
        appended = [self.output_dir / "samples.extxyz", self.output_dir / "samples.csv"]
        sizes = {path: path.stat().st_size if path.exists() else None for path in appended}
        cifs: list[Path] = []
        try:
            if "cif" in self.formats:
                for name, structure in zip(frame["id"], structures):
                    if structure is not None:
                        cifs.append(self.output_dir / "cifs" / f"{name}.cif")
                        atomic_write_with(lambda p, s=structure: s.to(filename=str(p), fmt="cif"), cifs[-1])
            if "extxyz" in self.formats:
                from ase.io import write

                atoms = _ase_atoms(frame["id"], structures)
                write(str(appended[0]), atoms, format="extxyz", append=self.num_samples > 0)
            if "csv" in self.formats:  # last: a row in the table has its files
                frame.to_csv(appended[1], mode="a", header=self.num_samples == 0, index=False)
            self.num_samples, self.valid_tokens, self.seconds = (  # the batch counts once its files are all written
                self.num_samples + len(frame),
                self.valid_tokens + int(frame["valid_tokens"].sum()),
                self.seconds + seconds,
            )
        except BaseException:  # Ctrl-C (or a failure) mid-batch: the batch leaves nothing, the files stay in step
            for path in cifs:
                path.unlink(missing_ok=True)
            for path, size in sizes.items():
                if size is None:
                    path.unlink(missing_ok=True)
                elif path.exists():
                    os.truncate(path, size)
            raise

    def finish(self, interrupted: bool = False) -> dict:
        meta = {
            **self.settings,
            "num_samples": self.num_samples,
            "sampling_seconds": self.seconds,
            "crystals_per_second": self.num_samples / self.seconds if self.seconds else None,
            "valid_tokens": self.valid_tokens,
            "files": self.files(),
        }
        if interrupted:
            meta["interrupted"] = True
        if "csv" in self.formats:
            atomic_write_text(json.dumps(meta, indent=2), self.output_dir / "samples.csv.meta.json")
        atomic_write_text(json.dumps(meta, indent=2), self.output_dir / "sampling.json")
        return meta
