"""Combinations of rewards, each still a TRL reward callable (TRL itself only forms weighted sums).

* :class:`FigureOfMeritReward`: the paper's dielectric figure of merit ε∞ · E_g.
* :class:`ProductReward`, :class:`WeightedSumReward`: products / weighted sums of other rewards.
* :class:`ThresholdReward` / :class:`StabilityReward`: 1 if a value is on the right side of a threshold, else 0
  (stable = E_hull < 0.1 eV/atom).

Children keep their own caches, so combining rewards that share a child (e.g. a band-gap model inside both the
dielectric model and the FoM) costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymatgen.core import Structure

from .base import CrystalReward, Failure
from .ehull import EhullReward
from .properties import BandGapReward, DielectricReward


__all__ = ["FigureOfMeritReward", "ProductReward", "StabilityReward", "ThresholdReward", "WeightedSumReward"]


def _reward_or_failure(child: CrystalReward, value: float) -> float | Failure:
    r = child.reward_of(value)
    return Failure(f"{child.name}: reward not finite") if r is None else r


class _Composite(CrystalReward):
    """Shared plumbing: evaluate children on the same structures, combine their values."""

    def __init__(self, children: Sequence[CrystalReward], use_rewards: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("cache_size", 0)  # children cache; a second cache would only go stale
        super().__init__(**kwargs)
        if not children:
            raise ValueError("a combination needs at least one reward")
        self.children = list(children)
        self.use_rewards = bool(use_rewards)

    def batch_size(self) -> int:
        return 4096

    def _child_values(self, structures: list[Structure]) -> list[list[float | Failure]]:
        cols = []
        for child in self.children:
            vals = child.compute_with_reasons(structures)
            if self.use_rewards:  # as the child alone would score them: its own clip holds
                vals = [v if isinstance(v, Failure) else _reward_or_failure(child, v) for v in vals]
            cols.append(vals)
        return cols

    def _combine(self, values: list[float]) -> float:
        raise NotImplementedError

    def _compute_batch(self, structures: list[Structure]) -> list[float | Failure]:
        cols = self._child_values(structures)
        out: list[float | Failure] = []
        for i in range(len(structures)):
            row = [col[i] for col in cols]
            bad = [(c.name, v) for c, v in zip(self.children, row) if isinstance(v, Failure)]
            if bad:
                out.append(Failure("; ".join(f"{n}: {v.reason}" for n, v in bad)))
            else:
                out.append(self._combine([float(v) for v in row]))
        return out


class ProductReward(_Composite):
    """Product of the children's values (or of their rewards with ``use_rewards=True``)."""

    name = "product"

    def __init__(
        self, children: Sequence[CrystalReward], use_rewards: bool = False, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(children, use_rewards=use_rewards, **kwargs)
        self.name = self.__name__ = name or "*".join(c.name for c in self.children)

    def _combine(self, values: list[float]) -> float:
        p = 1.0
        for v in values:
            p *= v
        return p


class FigureOfMeritReward(ProductReward):
    """Dielectric figure of merit ε∞ · E_g (eV), the paper's second application; reward = FoM.

    Args:
        dielectric: a :class:`DielectricReward` (default: shipped model, sharing ``band_gap``).
        band_gap: a :class:`BandGapReward` (default: shipped MEGNet, PBE fidelity).
        uncertainty_penalty: ``k ≥ 0``: score ``E_g · exp(μ − k·σ)``, with ``μ``, ``σ`` the mean and population
            standard deviation of the dielectric ensemble's members' log ε∞ (see :class:`DielectricReward`); in log
            space that is ``mean − k·std`` of the members' log FoM, so the policy cannot climb where the ensemble is
            unsure. ``None`` (default) takes the given ``dielectric``'s own setting, or ``0`` (today's reward,
            exactly) for the default one; a value contradicting a given ``dielectric``'s raises ``ValueError``.
        device: where the default models run (``"auto"``: the rank's CUDA device, else CPU); given ones stay put.
    """

    unit = "eV"

    def __init__(
        self,
        dielectric: DielectricReward | None = None,
        band_gap: BandGapReward | None = None,
        device: Any = "auto",
        uncertainty_penalty: float | None = None,
        **kwargs: Any,
    ) -> None:
        band_gap = band_gap or (dielectric.band_gap if dielectric is not None else BandGapReward(device=device))
        if dielectric is None:
            k = 0.0 if uncertainty_penalty is None else uncertainty_penalty
            dielectric = DielectricReward(band_gap=band_gap, device=device, uncertainty_penalty=k)
        elif uncertainty_penalty is not None and float(uncertainty_penalty) != dielectric.uncertainty_penalty:
            raise ValueError(
                f"uncertainty_penalty={uncertainty_penalty} contradicts the given dielectric model's "
                f"({dielectric.uncertainty_penalty}): set it on the DielectricReward, or pass only one"
            )
        super().__init__([dielectric, band_gap], name="dielectric_fom", **kwargs)
        self.dielectric, self.band_gap = dielectric, band_gap


class WeightedSumReward(_Composite):
    """Σ w_i · reward_i (the children's *rewards*, e.g. -E_hull); ``None`` if any child fails."""

    name = "weighted_sum"

    def __init__(
        self,
        children: Sequence[CrystalReward],
        weights: Sequence[float] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(children, use_rewards=True, **kwargs)
        self.weights = [1.0] * len(self.children) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.children):
            raise ValueError("one weight per reward")
        self.name = self.__name__ = name or "+".join(f"{w:g}*{c.name}" for w, c in zip(self.weights, self.children))

    def _combine(self, values: list[float]) -> float:
        return sum(w * v for w, v in zip(self.weights, values))


class ThresholdReward(_Composite):
    """1.0 if the child's value is below (``below=True``) or above a threshold, else 0.0; values are ``(hit, miss)``."""

    name = "threshold"

    def __init__(
        self,
        child: CrystalReward,
        threshold: float,
        below: bool = True,
        values: tuple[float, float] = (1.0, 0.0),
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__([child], use_rewards=False, **kwargs)
        self.threshold, self.below, self.values = float(threshold), bool(below), (float(values[0]), float(values[1]))
        op = "<" if self.below else ">"
        self.name = self.__name__ = name or f"{child.name}{op}{self.threshold:g}"

    def _combine(self, values: list[float]) -> float:
        hit = values[0] < self.threshold if self.below else values[0] > self.threshold
        return self.values[0] if hit else self.values[1]


class StabilityReward(ThresholdReward):
    """1 if E_hull < ``threshold`` (0.1 eV/atom: the paper's "stable"), else 0; ``device`` is where the default
    :class:`EhullReward`'s potentials run (``"auto"``: the rank's CUDA device, else CPU)."""

    def __init__(
        self, ehull: EhullReward | None = None, threshold: float = 0.1, device: Any = "auto", **kwargs: Any
    ) -> None:
        ehull = ehull or EhullReward(device=device)
        super().__init__(ehull, threshold=threshold, below=True, name="stable", **kwargs)


class StableFigureOfMeritReward(ProductReward):
    """The figure of merit gated by stability: ε∞·E_g if E_hull < ``threshold`` (eV/atom), else 0.

    A weighted sum FoM − w·E_hull cannot both stop exploits (FoM ≈ 500 at E_hull ≈ 2.5 eV/atom) and keep the FoM
    in charge among near-stable crystals; the gate scores only stable crystals by their FoM. Pair it with a small
    floored E_hull term (``ehull`` with ``reward_clip_range=(-10, 0)``) so unstable crystals still feel a slope.

    Args:
        uncertainty_penalty: ``k`` of the uncertainty-aware FoM (see :class:`FigureOfMeritReward`; default 0, or
            the given ``figure_of_merit``'s own).
        threshold: the stability threshold (default 0.1, the paper's "stable", or the given ``stability``'s own).
        device: where the default models run.
        figure_of_merit, stability: the two rewards to combine (default: built here); a contradicting
            ``uncertainty_penalty`` or ``threshold`` raises ``ValueError``.
    """

    def __init__(
        self,
        uncertainty_penalty: float | None = None,
        threshold: float | None = None,
        device: Any = "auto",
        figure_of_merit: FigureOfMeritReward | None = None,
        stability: StabilityReward | None = None,
        **kwargs: Any,
    ) -> None:
        if figure_of_merit is None:
            figure_of_merit = FigureOfMeritReward(device=device, uncertainty_penalty=uncertainty_penalty)
        elif (
            uncertainty_penalty is not None
            and float(uncertainty_penalty) != figure_of_merit.dielectric.uncertainty_penalty
        ):
            raise ValueError(
                f"uncertainty_penalty={uncertainty_penalty} contradicts the given figure_of_merit's "
                f"({figure_of_merit.dielectric.uncertainty_penalty}): pass only one"
            )
        if stability is None:
            stability = StabilityReward(threshold=0.1 if threshold is None else threshold, device=device)
        elif threshold is not None and float(threshold) != stability.threshold:
            raise ValueError(f"threshold={threshold} contradicts the given stability reward's ({stability.threshold})")
        super().__init__([figure_of_merit, stability], name="stable_fom", **kwargs)
