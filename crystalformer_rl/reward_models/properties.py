"""Property rewards: band gap (eV) and electronic dielectric constant ε∞, thin rewards over the models of
:mod:`crystalformer_rl.materials.properties` (which ship their weights, so both work offline).

Both take ``device`` (default ``"auto"``: the rank's CUDA device when there is one, else the CPU).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element, Structure

from ..devices import resolve_device
from ..materials.potentials import ModelUnavailableError
from ..materials.properties import (
    BANDGAP_MODEL_DIR,
    DIELECTRIC_MODEL_DIR,
    DielectricEnsemble,
    DielectricFeaturizer,
    MatGLPropertyModel,
    default_bandgap_model,
)
from ..materials.structures import without_oxidation_states
from .base import CrystalReward, Failure, as_structure


logger = logging.getLogger(__name__)

__all__ = ["BandGapReward", "DielectricReward"]


class BandGapReward(CrystalReward):
    """PBE band gap (eV) from the shipped multi-fidelity MEGNet; reward = gap (use combinations for targets).

    Args:
        model: ``None`` (shipped MEGNet-MP-2019.4.1-BandGap-mfi), a matgl folder/name, or a
            :class:`MatGLPropertyModel`.
        fidelity: MEGNet-mfi state: 0 PBE, 1 GLLB-SC, 2 HSE, 3 SCAN.
        clip_negative: clip small negative predictions to 0 (a gap is never negative; keeps products sane).
        message_aggregation: see :class:`MatGLPropertyModel`.
        device: where the model runs (``"auto"``: the rank's CUDA device, else CPU); a given
            :class:`MatGLPropertyModel` stays where it is.
    """

    name = "band_gap"
    unit = "eV"

    def __init__(
        self,
        model: str | Path | MatGLPropertyModel | None = None,
        fidelity: int = 0,
        clip_negative: bool = True,
        message_aggregation: str = "dst",
        batch_size: int = 64,
        device: Any = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(model, MatGLPropertyModel):
            self.model = model
        elif model is None and fidelity == 0 and batch_size == 64:
            self.model = default_bandgap_model(message_aggregation, str(resolve_device(device)))
        else:
            self.model = MatGLPropertyModel(
                model or BANDGAP_MODEL_DIR,
                state_attr=fidelity,
                message_aggregation=message_aggregation,
                batch_size=batch_size,
                device=device,
            )
        self.device = self.model.device
        self.clip_negative = bool(clip_negative)

    def supported_elements(self) -> frozenset[str]:
        return self.model.elements

    def batch_size(self) -> int:
        return self.model.batch_size

    def _compute_batch(self, structures: list[Structure]) -> list[float | Failure]:
        pred = self.model.predict(structures)
        if self.clip_negative:
            pred = np.clip(pred, 0.0, None)
        return [float(p) for p in pred]


class DielectricReward(CrystalReward):
    """Electronic (high-frequency) dielectric constant ε∞ (``poly_electronic``, dimensionless) of each crystal.

    Args:
        model_dir: folder with ``model.safetensors`` + ``config.json`` written by ``scripts/train_dielectric.py``
            (default: the shipped model).
        band_gap: the band-gap reward used for the gap/Penn features (shared cache with a FoM reward).
        max_value: predictions above this are reported as failures (out of the training domain); compared with the
            ensemble's central prediction ``exp(μ)``, whatever ``uncertainty_penalty``.
        uncertainty_penalty: ``k ≥ 0``. The ensemble's members predict ``y_m = log ε∞``; the value reported is
            ``exp(μ − k·σ)`` with ``μ`` the members' mean and ``σ`` their population standard deviation (ddof 0),
            i.e. a lower confidence bound on ε∞ in the space the ensemble averages in, so a policy cannot climb where
            the members disagree. ``k = 0`` (default) is the plain ensemble prediction ``exp(μ)``, computed exactly
            as before this option existed.
        device: where the ensemble, CHGNet features and (default) band gap run (``"auto"``: the rank's CUDA device,
            else CPU).
    """

    name = "dielectric"
    unit = ""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        band_gap: BandGapReward | None = None,
        max_value: float = 300.0,
        device: Any = "auto",
        uncertainty_penalty: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.uncertainty_penalty = _check_penalty(uncertainty_penalty)
        self.device = resolve_device(device)
        folder = Path(model_dir) if model_dir is not None else DIELECTRIC_MODEL_DIR
        if not (folder / "model.safetensors").exists():
            raise ModelUnavailableError(f"no dielectric model in {folder}; train one with scripts/train_dielectric.py")
        model, self.metadata = DielectricEnsemble.load(folder)
        self.model = model.to(self.device)
        self.band_gap = band_gap or BandGapReward(device=self.device)
        features = self.metadata.get("features", "chgnet+desc")
        self.featurizer = DielectricFeaturizer(features, band_gap=self.band_gap.model, device=self.device)
        self.max_value = float(max_value)

    def supported_elements(self) -> frozenset[str]:
        return self.band_gap.supported_elements() & frozenset(Element.from_Z(z).symbol for z in range(1, 95))

    def batch_size(self) -> int:
        return 64

    def _compute_batch(self, structures: list[Structure]) -> list[float | Failure]:
        gaps = self.band_gap.compute_with_reasons(structures)
        out: list[float | Failure | None] = [g if isinstance(g, Failure) else None for g in gaps]
        ok = [i for i, g in enumerate(gaps) if not isinstance(g, Failure)]
        if ok:
            x = self.featurizer([structures[i] for i in ok], gaps=[gaps[i] for i in ok])
            with torch.no_grad():
                xt = torch.as_tensor(x, device=self.device)
                if self.uncertainty_penalty:
                    members = self.model.member_predictions(xt).double()  # (n_members, n) log ε∞
                    mu = members.mean(0)
                    sigma = (members - mu).square().mean(0).sqrt()  # population std over the members
                    central = torch.exp(mu).cpu().numpy()
                    eps = torch.exp(mu - self.uncertainty_penalty * sigma).cpu().numpy()
                else:  # exactly the plain ensemble prediction
                    eps = torch.exp(self.model(xt)).cpu().numpy()
                    central = eps
            for i, e, c in zip(ok, eps, central):
                out[i] = float(e) if c <= self.max_value else Failure(f"ε∞ {c:.3g} outside the training domain")
        return [o if o is not None else Failure("not scored") for o in out]

    def member_log_predictions(self, structures: Sequence[Any]) -> list[np.ndarray | None]:
        """Every ensemble member's log ε∞ per crystal (``None`` where the crystal or its band gap fails).

        Not cached and not clipped by ``max_value``: for analyses (e.g. how an ``uncertainty_penalty`` re-ranks the
        top candidates) and tests; ``compute`` gives ``exp(mean − k·std)`` of these rows.
        """
        gaps = self.band_gap.compute_with_reasons(list(structures))
        ok = [i for i, g in enumerate(gaps) if not isinstance(g, Failure)]
        out: list[np.ndarray | None] = [None] * len(gaps)
        if not ok:
            return out
        built = [as_structure(structures[i]) for i in ok]  # the gap was computed, so each one builds
        built = [without_oxidation_states(s) for s in built]
        x = self.featurizer(built, gaps=[gaps[i] for i in ok])
        with torch.no_grad():
            members = self.model.member_predictions(torch.as_tensor(x, device=self.device)).double().cpu().numpy()
        for j, i in enumerate(ok):
            out[i] = members[:, j]
        return out


def _check_penalty(k: Any) -> float:
    k = float(k)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"uncertainty_penalty must be a finite number >= 0, not {k}")
    return k
