"""The one plotting style of the package: a Matplotlib `Figure` on its own Agg canvas, outside pyplot (no global
backend switch, no figure left open in a registry), written atomically. The figures of an evaluation
(:mod:`crystalformer_rl.evaluation.plots`) and of a training run (:mod:`crystalformer_rl.trainers.plots`) are drawn
with these helpers."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .utils import atomic_write_bytes


def figure(figsize: tuple[float, float], ncols: int = 1):
    """``(fig, ax)``, or ``(fig, axes)`` for ``ncols > 1``: a figure on an Agg canvas, outside pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    if ncols == 1:
        return fig, fig.add_subplot()
    return fig, list(fig.subplots(1, ncols))


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG by default) through a temporary file and a rename."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=(path.suffix.lstrip(".") or "png"), dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(buffer.getvalue(), path)


def finite(values: Sequence[Any]) -> np.ndarray:
    """The finite numbers among ``values`` (None, NaN, text left out)."""
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(x)
    return np.asarray(out, dtype=float)
