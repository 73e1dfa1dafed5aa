"""Property models: band gap (MEGNet through matgl) and electronic dielectric constant (an ensemble trained here).

Both ship their weights inside the package (``data/``), so they work offline. The rewards over them
(``BandGapReward``, ``DielectricReward``) are in :mod:`crystalformer_rl.reward_models.properties`.

Band gap: the paper's multi-fidelity MEGNet (``MEGNet-MP-2019.4.1-BandGap-mfi``, BSD-3, Chen et al. 2021), PBE
fidelity (``state_attr = 0``). matgl 4.x ports MEGNet to PyTorch Geometric and aggregates edge messages into the
*source* node, whereas these weights were trained with DGL, which aggregated into the *destination* node. With
matgl 4's convention the model underestimates gaps (NaCl 4.59 eV instead of MP's 5.0; MAE 0.47 eV on MP-20 rows);
restoring the training-time convention on the loaded instance gives NaCl 5.03 eV and MAE 0.38 eV. It is on by
default (``message_aggregation="dst"``); ``"src"`` keeps matgl's behaviour.

Dielectric: no pretrained offline model exists, so ``scripts/train_dielectric.py`` trains a small ensemble of MLPs
on the Petousis et al. DFPT data (Sci. Data 4, 160134 (2017)) predicting ``poly_electronic`` (ε∞, the mean
eigenvalue of the electronic dielectric tensor) from CHGNet crystal features, composition/structure descriptors,
the MEGNet gap and Penn-model features (ε∞ ≈ 1 + (ħω_p / E_gap)², ω_p from the valence-electron density).

Both take ``device`` (default ``"auto"``: the rank's CUDA device when there is one, else the CPU).
"""

from __future__ import annotations

import json
import types
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Composition, Element, Structure

from ..devices import resolve_device
from .potentials import ModelUnavailableError, load_chgnet


__all__ = [
    "BANDGAP_MODEL_DIR",
    "DIELECTRIC_MODEL_DIR",
    "DielectricEnsemble",
    "DielectricFeaturizer",
    "MatGLPropertyModel",
    "default_bandgap_model",
    "load_matgl_model",
    "penn_features",
    "structure_descriptors",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
BANDGAP_MODEL_DIR = DATA_DIR / "MEGNet-MP-2019.4.1-BandGap-mfi"
DIELECTRIC_MODEL_DIR = DATA_DIR / "dielectric_model"


# =========================================================================== matgl property models
def load_matgl_model(model: str | Path) -> Any:
    """Load a matgl model from a folder (or a name, which needs the Hub) with weights-only loading.

    matgl 4.x checkpoints of MEGNet property models pickle a ``Normalizer``; it is allow-listed for torch's
    weights-only unpickler instead of falling back to ``weights_only=False``.
    """
    try:
        import matgl
        from matgl.data.transformer import Normalizer
    except ImportError as exc:
        raise ModelUnavailableError("matgl is not installed: pip install 'crystalformer-rl[matgl]'") from exc
    torch.serialization.add_safe_globals([Normalizer])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return matgl.load_model(model)
    except Exception as exc:
        raise ModelUnavailableError(
            f"could not load matgl model {str(model)!r}: {exc}. Offline, pass a local folder with model.json, "
            "model.pt and state.pt."
        ) from exc


def _node_update_dst(self: Any, edge_index: torch.Tensor, edge_feat: torch.Tensor, node_feat: torch.Tensor,
                     u_per_node: torch.Tensor, num_nodes: int) -> torch.Tensor:  # fmt: skip
    """MEGNet node update aggregating edge messages into their destination node (DGL-era convention)."""
    from matgl.layers._graph_convolution import scatter_mean

    ve = scatter_mean(edge_feat, edge_index[1], dim_size=num_nodes, dim=0)
    return self.node_func(torch.hstack([node_feat, ve, u_per_node]))


class MatGLPropertyModel:
    """Batched predictions of a matgl MEGNet-style property model (one number per structure).

    Args:
        model: folder, matgl name or loaded model.
        state_attr: graph state (fidelity index for multi-fidelity models; ``None`` = model default).
        message_aggregation: ``"dst"`` restores the DGL-era MEGNet convention the shipped weights were trained
            with (see module docstring); ``"src"`` keeps matgl 4's.
        batch_size: structures per forward pass.
        device: where the model runs (``"auto"``: the rank's CUDA device, else CPU); a loaded model is moved.
    """

    def __init__(
        self,
        model: str | Path | Any,
        state_attr: int | None = 0,
        message_aggregation: str = "dst",
        batch_size: int = 64,
        device: Any = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.model = load_matgl_model(model) if isinstance(model, (str, Path)) else model
        self.model = self.model.to(self.device)
        self.model.eval()
        self.name = Path(str(model)).name if isinstance(model, (str, Path)) else type(model).__name__
        inner = getattr(self.model, "model", self.model)
        if message_aggregation not in {"src", "dst"}:
            raise ValueError("message_aggregation must be 'src' or 'dst'")
        if message_aggregation == "dst":
            from matgl.layers._graph_convolution import MEGNetGraphConv

            for mod in inner.modules():
                if isinstance(mod, MEGNetGraphConv):
                    mod.node_update_ = types.MethodType(_node_update_dst, mod)
        self.state_attr = state_attr
        self.batch_size = int(batch_size)
        self.elements = frozenset(inner.element_types)
        from matgl.ext.pymatgen import Structure2Graph

        self._converter = Structure2Graph(element_types=inner.element_types, cutoff=inner.cutoff)

    def predict(self, structures: Sequence[Structure]) -> np.ndarray:
        from torch_geometric.data import Batch

        out = []
        for start in range(0, len(structures), self.batch_size):
            graphs = []
            for s in structures[start : start + self.batch_size]:
                g, lat, _ = self._converter.get_graph(s)
                g.pbc_offshift = g.pbc_offset @ lat[0]
                g.pos = g.frac_coords @ lat[0]
                graphs.append(g)
            state = None
            if self.state_attr is not None:
                state = torch.full((len(graphs),), self.state_attr, dtype=torch.long, device=self.device)
            with torch.no_grad():
                pred = self.model(g=Batch.from_data_list(graphs).to(self.device), state_attr=state)
            out.append(pred.reshape(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


@lru_cache(maxsize=4)
def default_bandgap_model(message_aggregation: str, device: str) -> MatGLPropertyModel:
    """The shipped MEGNet (PBE fidelity), one per convention and device, shared by everything that needs a gap."""
    return MatGLPropertyModel(BANDGAP_MODEL_DIR, state_attr=0, message_aggregation=message_aggregation, device=device)


# =========================================================================== dielectric
def _valence_electrons(el: Element) -> int:
    """Outer-shell s+p electrons plus those of unfilled d/f shells (the ones that screen a field)."""
    shells = el.full_electronic_structure
    n_max = max(n for n, _, _ in shells)
    v = sum(c for n, _, c in shells if n == n_max)
    v += sum(
        c
        for n, l_, c in shells
        if (l_ == "d" and n == n_max - 1 and c < 10) or (l_ == "f" and n == n_max - 2 and c < 14)
    )
    return int(v)


@lru_cache(maxsize=128)
def _element_props(symbol: str) -> tuple[float, ...]:
    el = Element(symbol)
    x = el.X if np.isfinite(el.X) else 2.0
    radius = float(el.atomic_radius) if el.atomic_radius is not None else 1.5
    return (
        float(el.Z),
        float(x),
        float(el.row),
        float(el.group),
        radius,
        float(el.atomic_mass),
        float(_valence_electrons(el)),
    )


#: ħω_p (eV) = PLASMA_EV * sqrt(valence electrons per Å^3)
PLASMA_EV = 37.14


def structure_descriptors(structure: Structure) -> np.ndarray:
    """Composition statistics (fraction-weighted mean, spread, range of Z, χ, row, group, radius, mass, valence
    electrons), volume and density, valence-electron density and plasma energy, number of elements and log atoms.
    """
    comp: Composition = structure.composition
    fr = np.array([comp.get_atomic_fraction(e) for e in comp.elements])
    props = np.array([_element_props(e.symbol) for e in comp.elements])
    mean = fr @ props
    std = np.sqrt(fr @ (props - mean) ** 2)
    rng = props.max(0) - props.min(0)
    n_val = sum(_element_props(e.symbol)[-1] * comp[e] for e in comp.elements) / structure.volume
    extra = [
        structure.volume / len(structure),
        structure.density,
        n_val,
        PLASMA_EV * np.sqrt(n_val),
        len(comp.elements),
        np.log(len(structure)),
    ]
    return np.concatenate([mean, std, rng, extra]).astype(np.float64)


def penn_features(gap: np.ndarray, plasma_ev: np.ndarray) -> np.ndarray:
    """log(1 + (ħω_p / (E_g + c))²) for a few Penn-gap offsets c: the Penn-model estimate of ε∞."""
    gap = np.clip(np.asarray(gap, dtype=np.float64), 0.0, None)
    return np.stack([np.log1p((plasma_ev / (gap + c)) ** 2) for c in (1.0, 2.0, 4.0, 8.0)], axis=1)


class DielectricFeaturizer:
    """Builds the dielectric model's inputs; ``kind`` is ``"desc"`` (descriptors + gap + Penn) or
    ``"chgnet+desc"`` (plus CHGNet r2SCAN crystal features, computed on ``device``). Gaps not given are predicted
    by ``band_gap`` (a :class:`MatGLPropertyModel`, default the shipped MEGNet), clipped at 0."""

    def __init__(
        self,
        kind: str = "chgnet+desc",
        band_gap: MatGLPropertyModel | None = None,
        chgnet_model: str = "r2scan",
        device: Any = "auto",
    ) -> None:
        if kind not in {"desc", "chgnet+desc"}:
            raise ValueError(f"unknown featurization {kind!r}")
        self.kind = kind
        self.device = resolve_device(device)
        self.band_gap = band_gap or default_bandgap_model("dst", str(self.device))
        self.chgnet_model = chgnet_model

    def chgnet_features(self, structures: Sequence[Structure], batch_size: int = 16) -> np.ndarray:
        model = load_chgnet(self.chgnet_model, self.device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = model.predict_structure(
                list(structures), task="e", return_crystal_feas=True, batch_size=batch_size
            )
        if isinstance(preds, dict):
            preds = [preds]
        return np.stack([np.asarray(p["crystal_fea"], dtype=np.float64) for p in preds])

    def __call__(self, structures: Sequence[Structure], gaps: Sequence[float] | None = None) -> np.ndarray:
        if gaps is None:
            gaps = np.clip(self.band_gap.predict(list(structures)), 0.0, None)
        gap = np.asarray(gaps, dtype=np.float64)
        desc = np.stack([structure_descriptors(s) for s in structures])
        parts = [desc, gap[:, None], np.log1p(np.clip(gap, 0, None))[:, None], penn_features(gap, desc[:, -3])]
        if self.kind == "chgnet+desc":
            parts.insert(0, self.chgnet_features(structures))
        return np.concatenate(parts, axis=1)


class DielectricEnsemble(torch.nn.Module):
    """Ensemble of small MLPs on standardised features, predicting log ε∞ (averaged over members)."""

    def __init__(self, n_features: int, hidden: int = 64, n_members: int = 5, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_features, self.hidden, self.n_members, self.dropout = n_features, hidden, n_members, dropout
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float64))
        self.members = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Linear(n_features, hidden),
                torch.nn.SiLU(),
                torch.nn.Dropout(dropout),
                torch.nn.Linear(hidden, hidden),
                torch.nn.SiLU(),
                torch.nn.Linear(hidden, 1),
            )
            for _ in range(n_members)
        )

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.scale).clamp(-6, 6).float()

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        z = self.standardise(x)
        if member is not None:
            return self.members[member](z).squeeze(-1)
        return torch.stack([m(z).squeeze(-1) for m in self.members]).mean(0)

    def member_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """log ε∞ of every member, shape ``(n_members, n)`` (:meth:`forward` is their mean over dim 0)."""
        z = self.standardise(x)
        return torch.stack([m(z).squeeze(-1) for m in self.members])

    def save(self, folder: str | Path, metadata: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        config = {
            "n_features": self.n_features,
            "hidden": self.hidden,
            "n_members": self.n_members,
            "dropout": self.dropout,
        }
        (folder / "config.json").write_text(json.dumps({"model": config, **metadata}, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> tuple[DielectricEnsemble, dict[str, Any]]:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "config.json").read_text())
        model = cls(**meta["model"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.eval()
        return model, meta
