"""Preference pairs for DPO: one dataset row per (chosen, rejected) pair, so a shuffle keeps them aligned.

Three sources:

* a table with row-aligned chosen / rejected crystals (CIF text or file, pymatgen ``Structure`` or its dict / JSON,
  ``CrystalTokens``, token dicts, or token strings such as ``225-a-Na-0-0-0-b-Cl-1/2-1/2-1/2-5.6-5.6-5.6-90-90-90``):
  :func:`pairs_from_table`;
* samples of a model scored by any reward callable, the better crystal of a space group paired with a worse one
  when their rewards differ by a margin: :func:`build_reward_pairs`;
* samples of a model against their relaxed versions (chosen = relaxed): :func:`build_relaxation_pairs`.

`PairOptions` (:mod:`crystalformer_rl.trainers.crystal_dpo_config`) says which (the pair options of ``crystalformer-rl dpo``), :func:`build_pairs` builds them as it
says, and :func:`cached_pairs` reuses the pairs an earlier run built with the same settings.

As ``prepare-data``, a row that cannot be used is skipped, never fatal, and reported (id, side, type, reason);
:func:`write_pairs` writes ``pairs.parquet``, ``pair_failures.csv`` and ``pairs_summary.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import sampling
from ..errors import UsageError, one_line
from ..materials.ehull import default_relax_fn
from ..materials.relaxation import relax_structures
from ..reward_models.registry import load_reward
from ..tokenization import TOKEN_FIELDS, CrystalTokenizationError, CrystalTokenizer, CrystalTokens, is_token_string
from ..utils import atomic_write_table, atomic_write_text
from .crystal_dpo_config import PAIR_SOURCES, PairOptions
from .utils import training_space_groups


SIDES = ("chosen", "rejected")
PAIR_COLUMNS = tuple(f"{side}_{key}" for side in SIDES for key in TOKEN_FIELDS)
FAILURE_COLUMNS = ["id", "side", "error_type", "error"]
PAIRS_FILE, FAILURES_FILE, SUMMARY_FILE = "pairs.parquet", "pair_failures.csv", "pairs_summary.json"
def cached_pairs(output_dir: str | os.PathLike, settings: Mapping[str, Any]) -> pd.DataFrame | None:
    """The pairs an earlier run wrote into ``output_dir`` with the same ``settings``, else ``None``."""
    pairs, summary = Path(output_dir) / PAIRS_FILE, Path(output_dir) / SUMMARY_FILE
    if pairs.is_file() and summary.is_file() and json.loads(summary.read_text()).get("settings") == dict(settings):
        return pd.read_parquet(pairs)
    return None


def build_pairs(options: PairOptions, model, base_model: str | None = None, device=None):
    """``(pairs, failures, summary)`` as ``options.pairs`` says (see its help); ``model`` samples the crystals and
    ``base_model`` (its name: folder, Hub id or ``None`` for the embedded model) gives the space-group prompts."""
    settings = {"settings": options.settings(base_model)}
    tokenizer = CrystalTokenizer(n_max=model.config.n_max)
    if options.pairs not in PAIR_SOURCES:
        try:
            pairs, failures = load_pair_table(
                options.pairs, options.chosen_column, options.rejected_column, tokenizer=tokenizer
            )
        except ValueError as exc:  # a missing column names the columns it found
            raise UsageError(f"--pairs {options.pairs}: {one_line(exc)}") from exc
        return pairs, failures, summarise(pairs, failures, settings)
    groups = training_space_groups(options.prompts, base_model)
    groups = np.random.default_rng(options.sample_seed).choice(np.asarray(groups), size=options.num_samples)
    if device is not None:
        model.to(device)
    if options.pairs == "sample":
        pairs, failures, counts = build_reward_pairs(
            model,
            load_reward(options.reward, **options.reward_keywords()),
            groups,
            margin=options.margin,
            seed=options.sample_seed,
            batch_size=options.sample_batch_size,
            failure_reward=options.failure_reward,
        )
    else:
        pairs, failures, counts = build_relaxation_pairs(
            model,
            groups,
            seed=options.sample_seed,
            batch_size=options.sample_batch_size,
            fmax=options.relax_fmax,
            steps=options.relax_steps,
        )
    counts.pop("pairs", None)
    return pairs, failures, summarise(pairs, failures, settings, **counts)


class UnusablePairError(ValueError):
    """A pair that parses but carries no preference (e.g. the same crystal on both sides)."""


def as_crystal_tokens(crystal: Any, tokenizer: CrystalTokenizer, name: str | None = None) -> CrystalTokens:
    """Tokens of one crystal in any of the forms the module docstring lists."""
    if isinstance(crystal, CrystalTokens):
        return crystal
    if isinstance(crystal, Mapping) and all(k in crystal for k in TOKEN_FIELDS):
        return CrystalTokens.from_dict(crystal, tokenizer.n_max)
    if crystal is None or (isinstance(crystal, float) and math.isnan(crystal)):
        raise CrystalTokenizationError(f"{name or 'crystal'}: missing value")
    if isinstance(crystal, str):
        text = crystal.strip()
        if is_token_string(text):
            return CrystalTokens.from_string(text, tokenizer.n_max)
        if text.startswith("{") and '"G"' in text:
            return CrystalTokens.from_dict(json.loads(text), tokenizer.n_max)
    return tokenizer.encode(crystal, name=name)


def pair_row(chosen: CrystalTokens, rejected: CrystalTokens) -> dict[str, Any]:
    """The flat dataset row of one pair (``chosen_G`` ... ``rejected_L``, unpadded lists)."""
    row = {}
    for side, tokens in zip(SIDES, (chosen, rejected)):
        for key, value in tokens.as_dict().items():
            row[f"{side}_{key}"] = value
    return row


def pair_tokens(row: Mapping[str, Any], side: str, n_max: int = 21) -> CrystalTokens:
    """One side of a pair row back as ``CrystalTokens``."""
    return CrystalTokens.from_sites(*(row[f"{side}_{k}"] for k in TOKEN_FIELDS), n_max=n_max)


def pairs_from_table(
    chosen: Sequence[Any],
    rejected: Sequence[Any],
    ids: Sequence[Any] | None = None,
    tokenizer: CrystalTokenizer | None = None,
    extra: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Encode row-aligned chosen / rejected crystals; returns (pairs, failures).

    A pair is skipped when either side cannot be tokenized or both sides are the same crystal; each skip is one
    failures row naming the pair, the side and the reason. ``extra`` columns (row-aligned) are carried along.
    """
    if len(chosen) != len(rejected):
        raise ValueError(f"chosen and rejected must be row-aligned, got {len(chosen)} and {len(rejected)} rows")
    tokenizer = tokenizer or CrystalTokenizer()
    ids = [str(i) for i in ids] if ids is not None else [f"pair {i}" for i in range(len(chosen))]
    rows, failures = [], []
    for i, (name, pair) in enumerate(zip(ids, zip(chosen, rejected))):
        tokens = {}
        for side, crystal in zip(SIDES, pair):
            try:
                tokens[side] = as_crystal_tokens(crystal, tokenizer, name=f"{name} ({side})")
            except CrystalTokenizationError as exc:
                failures.append({"id": name, "side": side, "error_type": type(exc).__name__, "error": str(exc)})
            except Exception as exc:  # a library failure on one row must not end the job
                failures.append({"id": name, "side": side, "error_type": type(exc).__name__, "error": repr(exc)})
        if len(tokens) < 2:
            continue
        if tokens["chosen"] == tokens["rejected"]:
            error = UnusablePairError(f"{name}: the same crystal on both sides carries no preference")
            failures.append({"id": name, "side": "both", "error_type": type(error).__name__, "error": str(error)})
            continue
        row = {"id": name, **pair_row(tokens["chosen"], tokens["rejected"])}
        row.update({key: values[i] for key, values in (extra or {}).items()})
        rows.append(row)
    return _frame(rows, extra), pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def load_pair_table(
    source: str | os.PathLike,
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    tokenizer: CrystalTokenizer | None = None,
    split: str = "train",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs from a local CSV / parquet / JSON file or folder or a Hub dataset: either already tokenized (the
    ``chosen_G`` ... columns, e.g. a ``pairs.parquet`` of an earlier run) or two crystal columns to encode."""
    from ..data.prepare import id_column, load_crystal_dataset

    frame = load_crystal_dataset(source, split=split).to_pandas()
    if all(c in frame.columns for c in PAIR_COLUMNS):
        if "id" not in frame.columns:
            frame.insert(0, "id", [f"pair {i}" for i in range(len(frame))])
        return frame, pd.DataFrame(columns=FAILURE_COLUMNS)
    missing = [c for c in (chosen_column, rejected_column) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source}: no column(s) {missing}; found {list(frame.columns)} (set chosen_column / rejected_column)"
        )
    names = id_column(frame.columns)
    return pairs_from_table(
        frame[chosen_column].tolist(),
        frame[rejected_column].tolist(),
        ids=frame[names].tolist() if names else None,
        tokenizer=tokenizer,
    )


# ------------------------------------------------------------------------------------ pairs from samples
def sample_crystals(
    model, space_groups: Sequence[int], batch_size: int = 500, seed: int = 0, **sample_kwargs
) -> list[CrystalTokens]:
    """One crystal per entry of ``space_groups``, drawn by the model in eval mode (reproducible from ``seed``)."""
    was_training = model.training
    model.eval()
    try:
        crystals, _, _ = sampling.sample_crystals(
            model, space_groups, batch_size=batch_size, progress=False, seed=seed, **sample_kwargs
        )
    finally:
        model.train(was_training)
    return crystals


def score_crystals(reward_fn: Callable, crystals: Sequence[CrystalTokens]) -> np.ndarray:
    """Rewards through the TRL reward protocol (higher is better); NaN where the reward gave None."""
    values = reward_fn(
        prompts=[c.G for c in crystals], completions=list(crystals), completion_ids=[None] * len(crystals)
    )
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def pair_by_reward(
    space_groups: Sequence[int], rewards: Sequence[float], margin: float = 0.0
) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(chosen, rejected) index pairs within each space group: the i-th best crystal against the i-th worst, each
    crystal used once, kept when the rewards differ by at least ``margin`` (and are not tied).

    Pairing the extremes first gives the clearest preferences; a group of n scorable crystals gives at most n // 2
    pairs. NaN rewards are left out.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    by_group: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(space_groups):
        if np.isfinite(rewards[i]):
            by_group[int(g)].append(i)
    pairs, below_margin, alone = [], 0, 0
    for g in sorted(by_group):
        order = sorted(by_group[g], key=lambda i: (-rewards[i], i))
        if len(order) < 2:
            alone += len(order)
        for k in range(len(order) // 2):
            best, worst = order[k], order[-1 - k]
            gap = rewards[best] - rewards[worst]
            if gap >= margin and gap > 0:
                pairs.append((best, worst))
            else:
                below_margin += 1
    return pairs, {"below_margin": below_margin, "alone_in_space_group": alone}


def build_reward_pairs(
    model,
    reward_fn: Callable,
    space_groups: Sequence[int],
    margin: float = 0.0,
    seed: int = 0,
    batch_size: int = 500,
    failure_reward: float | None = None,
    crystals: Sequence[CrystalTokens] | None = None,
    **sample_kwargs,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Sample one crystal per space-group entry, score, pair within space groups (:func:`pair_by_reward`).

    Returns (pairs with ``chosen_reward`` / ``rejected_reward``, failures: the unscorable samples, counts).
    Unscorable crystals are skipped unless ``failure_reward`` scores them (then they are candidates for
    rejection, like the reference RL's failures). ``crystals`` replaces the sampler (tests, pre-drawn samples).
    """
    if crystals is None:
        crystals = sample_crystals(model, space_groups, batch_size=batch_size, seed=seed, **sample_kwargs)
    crystals = list(crystals)
    rewards = score_crystals(reward_fn, crystals)
    unscorable = ~np.isfinite(rewards)
    reasons = _reasons(reward_fn, len(crystals))
    failures = [
        {"id": f"sample-{i:06d}", "side": "sample", "error_type": "Unscorable", "error": reasons[i] or "no reward"}
        for i in np.flatnonzero(unscorable)
    ]
    if failure_reward is not None:
        rewards = np.where(unscorable, float(failure_reward), rewards)
    groups = [c.G for c in crystals]
    index_pairs, counts = pair_by_reward(groups, rewards, margin)
    rows = []
    for best, worst in index_pairs:
        rows.append(
            {
                "id": f"sample-{best:06d}/sample-{worst:06d}",
                **pair_row(crystals[best], crystals[worst]),
                "chosen_reward": float(rewards[best]),
                "rejected_reward": float(rewards[worst]),
            }
        )
    extra = {"chosen_reward": (), "rejected_reward": ()}
    summary = {
        "sampled": len(crystals),
        "unscorable": int(unscorable.sum()),
        **counts,
        "pairs": len(rows),
    }
    return _frame(rows, extra), pd.DataFrame(failures, columns=FAILURE_COLUMNS), summary


def build_relaxation_pairs(
    model,
    space_groups: Sequence[int],
    seed: int = 0,
    batch_size: int = 500,
    relax_fn: Callable | None = None,
    fmax: float = 0.1,
    steps: int = 500,
    crystals: Sequence[CrystalTokens] | None = None,
    **sample_kwargs,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Samples against their relaxed selves: chosen = relaxed (re-tokenized), rejected = as sampled.

    A sample that cannot be decoded or relaxed, or whose relaxed structure cannot be tokenized, is skipped and
    reported. ``relax_fn`` as :func:`crystalformer_rl.materials.relax_structures` takes it (default: the default
    E_hull potential, :func:`~crystalformer_rl.materials.ehull.default_relax_fn`).
    """
    if crystals is None:
        crystals = sample_crystals(model, space_groups, batch_size=batch_size, seed=seed, **sample_kwargs)
    crystals = list(crystals)
    structures, failures = [], []
    for i, c in enumerate(crystals):
        try:
            structures.append(c.to_structure())
        except CrystalTokenizationError as exc:
            structures.append(None)
            failures.append(
                {"id": f"sample-{i:06d}", "side": "rejected", "error_type": type(exc).__name__, "error": str(exc)}
            )
    relax_fn = relax_fn or default_relax_fn(fmax=fmax, steps=steps)
    relaxed, _, reasons = relax_structures(structures, relax_fn=relax_fn, fmax=fmax, steps=steps, progress=False)
    keep = [i for i, s in enumerate(relaxed) if s is not None]
    failures += [
        {"id": f"sample-{i:06d}", "side": "chosen", "error_type": "RelaxationError", "error": reasons[i]}
        for i, s in enumerate(relaxed)
        if s is None and structures[i] is not None
    ]
    pairs, table_failures = pairs_from_table(
        [relaxed[i] for i in keep],
        [crystals[i] for i in keep],
        ids=[f"sample-{i:06d}" for i in keep],
        tokenizer=CrystalTokenizer(n_max=crystals[0].n_max if crystals else 21),
    )
    failures = pd.concat([pd.DataFrame(failures, columns=FAILURE_COLUMNS), table_failures], ignore_index=True)
    summary = {"sampled": len(crystals), "relaxed": len(keep), "pairs": len(pairs)}
    return pairs, failures, summary


# ----------------------------------------------------------------------------------------- splits and files
def pairs_dataset(pairs: pd.DataFrame):
    """The pairs as a ``datasets.Dataset`` (one row per pair)."""
    from datasets import Dataset

    records = pairs.to_dict("records")
    for row in records:  # parquet round trips give numpy arrays; datasets wants plain (nested) lists
        for key in PAIR_COLUMNS:
            value = row[key]
            row[key] = np.asarray(value.tolist() if hasattr(value, "tolist") else value).tolist()
    if not records:
        return Dataset.from_dict({c: [] for c in pairs.columns})
    return Dataset.from_list(records)


def split_pairs(dataset, validation_fraction: float = 0.2, seed: int = 0):
    """(train, validation) after one shuffle, as the reference (20 %); validation is None for a fraction of 0."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), not {validation_fraction}")
    if validation_fraction == 0 or len(dataset) < 2:
        return dataset.shuffle(seed=seed), None
    n_valid = min(max(1, round(validation_fraction * len(dataset))), len(dataset) - 1)
    split = dataset.train_test_split(test_size=n_valid, seed=seed, shuffle=True)
    return split["train"], split["test"]


def summarise(pairs: pd.DataFrame, failures: pd.DataFrame, settings: Mapping[str, Any] | None = None, **counts):
    """Counts as ``prepare-data`` reports them: pairs kept, skipped (distinct ids), reasons by type."""
    return {
        **(dict(settings) if settings else {}),
        **counts,
        "pairs": int(len(pairs)),
        "skipped": int(failures["id"].nunique()) if len(failures) else 0,
        "failure_reasons": {str(k): int(v) for k, v in Counter(failures["error_type"]).items()},
    }


def write_pairs(
    pairs: pd.DataFrame, failures: pd.DataFrame, output_dir: str | os.PathLike, summary: Mapping[str, Any]
) -> Path:
    """``pairs.parquet``, ``pair_failures.csv`` and ``pairs_summary.json`` in ``output_dir`` (atomic writes)."""
    out = Path(output_dir)
    atomic_write_table(pairs, out / PAIRS_FILE)
    atomic_write_table(failures, out / FAILURES_FILE)
    atomic_write_text(json.dumps(dict(summary), indent=2), out / SUMMARY_FILE)
    return out / PAIRS_FILE


def _frame(rows: list[dict[str, Any]], extra: Mapping[str, Any] | None) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", *PAIR_COLUMNS, *(extra or {})])


def _reasons(reward_fn: Callable, n: int) -> list[str | None]:
    """Per-crystal failure reasons a ``CrystalReward`` keeps from its last call, if it has them."""
    stats = getattr(reward_fn, "last_stats", None)
    reasons = list(getattr(stats, "reasons", None) or [])
    return reasons if len(reasons) == n else [None] * n
