"""Figures of an evaluation: E_hull histograms of several models overlaid (paper Fig. 3), space-group bars, rates
per space group (paper Fig. 4) and a property scatter (paper Fig. 6a), in the package's one plotting style
(:mod:`crystalformer_rl.plotting`: a Figure on an Agg canvas, no pyplot, written atomically).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..plotting import figure, finite, save_figure


__all__ = ["plot_ehull_histogram", "plot_property_scatter", "plot_space_group_bars", "plot_space_group_rates"]


def plot_ehull_histogram(
    ehulls: Mapping[str, Sequence[float | None]] | Sequence[float | None],
    path: str | os.PathLike,
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
    threshold: float | None = 0.1,
    density: bool = True,
    title: str | None = None,
) -> Path:
    """Overlaid E_hull histograms, one per model (``{"base": [...], "RL": [...]}``), as the paper's Fig. 3.

    Values outside ``value_range`` are clipped into the edge bins (so every sample is counted) and ``None``/NaN
    are dropped; ``density`` makes models with different sample counts comparable. ``threshold`` draws the
    stability cut. The default range runs from -0.2 to the 90th percentile of all values (at least 1 eV/atom), so
    that the bulk of a weak model's samples is not piled into the last bin.
    """
    series = ehulls if isinstance(ehulls, Mapping) else {"samples": ehulls}
    if value_range is None:
        pooled = np.concatenate([finite(v) for v in series.values()] or [np.zeros(0)])
        upper = float(np.quantile(pooled, 0.9)) if pooled.size else 1.0
        value_range = (-0.2, max(1.0, float(np.ceil(upper * 2) / 2)))
    fig, ax = figure((6, 4))
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    for k, (label, values) in enumerate(series.items()):
        x = finite(values)
        if x.size == 0:
            continue
        x = np.clip(x, value_range[0], value_range[1])
        color = f"C{k % 10}"
        ax.hist(x, bins=edges, density=density, alpha=0.35, color=color, histtype="stepfilled")
        ax.hist(
            x, bins=edges, density=density, color=color, histtype="step", linewidth=1.2, label=f"{label} (n={x.size})"
        )
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"{threshold} eV/atom")
    ax.set_xlabel(r"$E_\mathrm{hull}$ (eV/atom)")
    ax.set_ylabel("density" if density else "count")
    ax.set_xlim(*value_range)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return save_figure(fig, path)


def plot_space_group_bars(
    space_groups: Mapping[str, Sequence[int | None]] | Sequence[int | None],
    path: str | os.PathLike,
    top: int = 20,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Bars of the ``top`` most frequent space groups (grouped bars when several models are given)."""
    series = space_groups if isinstance(space_groups, Mapping) else {"samples": space_groups}
    counts = {
        label: Counter(int(g) for g in values if not pd.isna(g))  # None, NaN and pandas.NA alike
        for label, values in series.items()
    }
    total: Counter = Counter()
    for c in counts.values():
        total.update({g: n / max(sum(c.values()), 1) for g, n in c.items()})
    groups = [g for g, _ in total.most_common(top)]
    fig, ax = figure((max(6, 0.35 * len(groups) * max(1, len(series))), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, (label, c) in enumerate(counts.items()):
        n = max(sum(c.values()), 1)
        heights = [c.get(g, 0) / (n if normalize else 1) for g in groups]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, heights, width=width, label=label)
    ax.set_xticks(x, [str(g) for g in groups], rotation=90 if len(groups) > 12 else 0)
    ax.set_xlabel("space group")
    ax.set_ylabel("fraction" if normalize else "count")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(frameon=False)
    return save_figure(fig, path)


def _rate_label(column: str) -> str:
    """``frac_sun_relaxed`` -> ``S.U.N. (relaxed)``."""
    name = column.removeprefix("frac_")
    base, _, rule = name.partition("_")
    text = {"sun": "S.U.N.", "stable": "stable", "valid": "valid", "unique": "unique", "novel": "novel"}.get(base)
    if text is None:
        return name
    return f"{text} ({rule})" if rule else text


def _space_group_symbol(number: int) -> str:
    """Short Hermann-Mauguin symbol of a space group in its standard setting (``P2₁/c``), else the number."""
    return _short_symbols().get(int(number), str(number))


@lru_cache(maxsize=1)
def _short_symbols() -> dict[int, str]:
    import spglib

    subscript = {f"_{d}": chr(0x2080 + d) for d in range(10)}  # screw axes: 2_1 -> 2₁
    symbols: dict[int, str] = {}
    for hall in range(1, 531):  # spglib lists each group's standard setting first
        kind = spglib.get_spacegroup_type(hall)
        symbols.setdefault(kind.number, re.sub(r"_\d", lambda m: subscript[m.group()], kind.international_short))
    return symbols


def plot_space_group_rates(
    table: pd.DataFrame | Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    columns: Sequence[str] = ("frac_sun_unrelaxed", "frac_sun_relaxed"),
    top: int = 20,
    title: str | None = None,
) -> Path:
    """Grouped bars of per-space-group rates (e.g. the S.U.N. ratio), as the paper's Fig. 4.

    ``table`` is :func:`~crystalformer_rl.evaluation.evaluate.space_group_table`'s output (``space_group``, ``n``
    and ``frac_*`` columns), or several of them by model name to compare. The ``top`` most frequent groups (over all
    tables) are shown, each labelled with its sample count per table; a missing column or group draws no bar.
    """
    tables = dict(table) if isinstance(table, Mapping) else {"": table}
    counts: Counter = Counter()
    for frame in tables.values():
        known = frame[frame["space_group"].notna()]
        counts.update(dict(zip(known["space_group"].astype(int), known["n"].astype(int))))
    groups = [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    series = [
        (name, column)
        for name, frame in tables.items()
        for column in columns
        if column in frame and frame[column].notna().any()
    ]
    fig, ax = figure((min(16, max(6, 0.3 * len(groups) * max(1, len(series)))), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    names = list(tables)
    for k, (name, column) in enumerate(series):
        frame = tables[name]
        known = frame[frame["space_group"].notna()]
        rates = dict(zip(known["space_group"].astype(int), known[column].astype(float)))
        heights = [rates.get(g, np.nan) for g in groups]
        label = f"{name}: {_rate_label(column)}" if name else _rate_label(column)
        # several models: one colour per model, its rates from light to dark, so that a model's bars read together
        shades = [c for n, c in series if n == name]
        if len(tables) > 1:
            color, alpha = f"C{names.index(name)}", 0.35 + 0.65 * shades.index(column) / max(1, len(shades) - 1)
        else:
            color, alpha = f"C{k}", 1.0
        ax.bar(x + (k - (len(series) - 1) / 2) * width, heights, width=width, label=label, color=color, alpha=alpha)
    per_table = [
        {int(k): int(v) for k, v in zip(f["space_group"].dropna(), f.loc[f["space_group"].notna(), "n"])}
        for f in tables.values()
    ]
    sizes = {t.get(g, 0) for t in per_table for g in groups}
    if len(sizes) == 1:  # the same count everywhere (samples drawn per group): say it once
        ticks = [f"{_space_group_symbol(g)}\n{g}" for g in groups]
        ax.set_xticks(x, ticks, fontsize=8)
        ax.text(0.99, 0.98, f"{sizes.pop()} samples per group and model", transform=ax.transAxes, ha="right", va="top")
    else:
        ticks = [f"{_space_group_symbol(g)} {g} (n={'/'.join(str(t.get(g, 0)) for t in per_table)})" for g in groups]
        ax.set_xticks(x, ticks, rotation=90)
    ax.set_xlabel("space group")
    ax.set_ylabel("fraction of the group's samples")
    if title:
        ax.set_title(title)
    if series:
        ax.legend(frameon=False)
    return save_figure(fig, path)


def plot_property_scatter(
    x: Sequence[float | None],
    y: Sequence[float | None],
    path: str | os.PathLike,
    xlabel: str = "x",
    ylabel: str = "y",
    groups: Sequence[str] | None = None,
    product_isolines: Sequence[float] = (),
    logy: bool = False,
    title: str | None = None,
    inset: tuple[Sequence[float], Sequence[float], str] | None = None,
) -> Path:
    """Scatter of two properties, coloured by ``groups`` (e.g. model name), as the paper's Fig. 6a.

    ``product_isolines`` draws curves x·y = c (the figure of merit ε·E_g of the dielectric task). Points with a
    missing coordinate are dropped. ``inset=(steps, values, label)`` adds a small curve in the upper right (Fig.
    6a's figure of merit against the RL step).
    """
    xs = np.array([np.nan if v is None else float(v) for v in x], dtype=float)
    ys = np.array([np.nan if v is None else float(v) for v in y], dtype=float)
    if len(xs) != len(ys):
        raise ValueError(f"x and y differ in length ({len(xs)} vs {len(ys)})")
    labels = np.array(list(groups) if groups is not None else ["samples"] * len(xs), dtype=object)
    ok = np.isfinite(xs) & np.isfinite(ys)
    fig, ax = figure((5, 4))
    for label in dict.fromkeys(labels[ok]):
        m = ok & (labels == label)
        ax.scatter(xs[m], ys[m], s=10, alpha=0.6, label=str(label))
    if product_isolines and ok.any():
        lo = max(float(np.nanmin(xs[ok])), 1e-3)
        grid = np.linspace(lo, float(np.nanmax(xs[ok])), 200)
        for c in product_isolines:
            ax.plot(grid, c / grid, "k--", linewidth=0.8)
            ax.annotate(f"{c:g}", (grid[-1], c / grid[-1]), fontsize=7)
        ax.set_ylim(float(np.nanmin(ys[ok])) * 0.9 if logy else None, float(np.nanmax(ys[ok])) * 1.1)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if groups is not None:
        ax.legend(frameon=False, loc="lower left")
    if inset is not None and len(inset[0]):
        box = ax.inset_axes([0.6, 0.62, 0.36, 0.32])
        box.plot(inset[0], inset[1], color="C3", linewidth=1)
        box.set_xlabel("RL step", fontsize=7)
        box.set_ylabel(inset[2], fontsize=7)
        box.tick_params(labelsize=6)
    return save_figure(fig, path)
