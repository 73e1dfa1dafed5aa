"""Total energies from universal interatomic potentials, with their energy scale recorded.

An :class:`EnergyModel` turns structures into total energies (eV per cell). Each model declares its
``energy_scale`` so that an energy-above-hull reward can refuse to compare it with a hull on another scale:

* ``"r2scan"``: r2SCAN-scale energies (CHGNet's ``r2scan`` model), comparable as they are with the Materials
  Project's mixed GGA/GGA+U/r2SCAN thermodynamics (the default hull).
* ``"gga"``: raw GGA/GGA+U energies in the Materials Project's VASP settings (M3GNet-MP, SevenNet 7net-0, Orb,
  MACE-MP, MatterSim). They need MP2020 corrections (see :func:`mp2020_corrected_energies`) before they are
  compared with a ``"gga_mp2020"`` hull (e.g. the Alexandria PBE hull used by the paper).
* ``"gga_mp2020"``: GGA/GGA+U energies that already include MP2020 corrections (CHGNet 0.3.0/0.2.0, whose
  MPtrj training labels were corrected).
* anything else (``"matpes_pbe"``, ``"toy"``, ...) is compared only with a hull of the same label.

Fast batched paths exist for CHGNet, matgl potentials and SevenNet; any ASE calculator works through
:class:`ASEEnergyModel`. Orb, MACE and MatterSim are optional adapters that download their weights at run
time; they raise :class:`ModelUnavailableError` with a clear message when that is impossible. Every model relaxes
through :mod:`.relaxation` (``relax_many``: FIRE in lockstep on the model's batched forces).

Every model built here takes ``device`` (default ``"auto"``: the rank's CUDA device when there is one, else the
CPU; see :func:`crystalformer_rl.devices.resolve_device`), so under ``accelerate launch`` each rank scores its own
samples on its own GPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from ..devices import resolve_device
from .relaxation import RelaxResult, calculator_efs, relax_in_lockstep


logger = logging.getLogger(__name__)

__all__ = [
    "ASEEnergyModel",
    "CHGNetEnergyModel",
    "EnergyModel",
    "MACEEnergyModel",
    "MatGLEnergyModel",
    "MatterSimEnergyModel",
    "ModelUnavailableError",
    "OrbEnergyModel",
    "SevenNetEnergyModel",
    "load_chgnet",
    "load_energy_model",
    "mp2020_corrected_energies",
]

R2SCAN = "r2scan"
GGA = "gga"
GGA_MP2020 = "gga_mp2020"

#: elements with a POTCAR in MPRelaxSet, i.e. the ones MP2020 corrections can be computed for
_MP_ELEMENTS: frozenset[str] | None = None


class ModelUnavailableError(RuntimeError):
    """An optional model is not installed, or its weights cannot be fetched (e.g. no internet)."""


class EnergyModel(ABC):
    """A universal potential that returns total energies (eV per cell) for a list of structures.

    Attributes:
        energy_scale: which reference the energies live on (see module docstring).
        name: human-readable model name (logs, docs).
    """

    energy_scale: str = GGA
    name: str = "energy-model"

    @abstractmethod
    def predict_energies(self, structures: Sequence[Structure]) -> list[float]:
        """Total energy (eV) of each structure; raise on failure (callers isolate bad structures)."""

    @abstractmethod
    def ase_calculator(self) -> Any:
        """An ASE calculator for the same model (used for relaxation)."""

    def supported_elements(self) -> Iterable[str] | None:
        """Element symbols the potential was trained on (``None`` if unknown)."""
        return None

    def batch_size(self) -> int:
        return 16

    def predict_efs(self, structures: Sequence[Structure]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Energy (eV), forces (n, 3) eV/Å and stress (ASE convention, eV/Å^3) per structure; raise on failure.
        One at a time through the ASE calculator here; models with a batched forward override it."""
        return calculator_efs(self.ase_calculator())(structures)

    def relax_many(
        self, structures: Sequence[Structure], fmax: float = 0.1, steps: int = 500, on_done=None
    ) -> list[RelaxResult | Exception]:
        """Relax many structures at once: ASE FIRE + FrechetCellFilter per structure, in lockstep, with one
        batched `predict_efs` call per step for all unconverged structures (see :func:`relax_in_lockstep`)."""
        return relax_in_lockstep(structures, self.predict_efs, fmax=fmax, steps=steps, on_done=on_done)

    def relax(self, structure: Structure, fmax: float = 0.1, steps: int = 500) -> RelaxResult:
        """Relax positions and cell of one structure (:meth:`relax_many` of one); raises on failure."""
        result = self.relax_many([structure], fmax=fmax, steps=steps)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, energy_scale={self.energy_scale!r})"


# --------------------------------------------------------------------------------------------------- ASE
class ASEEnergyModel(EnergyModel):
    """Any ASE calculator, one structure at a time.

    Args:
        calculator: an ASE ``Calculator``.
        energy_scale: the reference its energies are on; required because a silent scale mismatch against the
            hull gives E_hull errors of eV/atom.
        name: label for logs.
    """

    def __init__(self, calculator: Any, energy_scale: str, name: str | None = None) -> None:
        self.calculator = calculator
        self.energy_scale = energy_scale
        self.name = name or type(calculator).__name__

    def predict_energies(self, structures: Sequence[Structure]) -> list[float]:
        from pymatgen.io.ase import AseAtomsAdaptor

        out = []
        for s in structures:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = self.calculator
            out.append(float(atoms.get_potential_energy()))
        return out

    def ase_calculator(self) -> Any:
        return self.calculator

    def batch_size(self) -> int:
        return 1


# --------------------------------------------------------------------------------------------------- CHGNet
def load_chgnet(model_name: str = "r2scan", device: Any = "auto") -> Any:
    """Load a CHGNet shipped in the ``chgnet`` wheel once per process and device (rewards share it)."""
    return _load_chgnet(model_name, str(resolve_device(device)))


@lru_cache(maxsize=4)
def _load_chgnet(model_name: str, device: str) -> Any:
    try:
        from chgnet.model import CHGNet
    except ImportError as exc:  # pragma: no cover - chgnet is part of the "rewards" extra
        raise ModelUnavailableError("CHGNet is not installed: pip install 'crystalformer-rl[chgnet]'") from exc
    # CHGNet prints its parameter count; stderr keeps the stdout of JSON-printing benchmarks parseable.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
    model.eval()
    return model


class CHGNetEnergyModel(EnergyModel):
    """CHGNet, batched and energy-only (``task="e"``); weights ship in the ``chgnet`` wheel (offline).

    CHGNet 0.3.0/0.2.0 were trained on MPtrj energies *with* MP2020 corrections (the CHGNet fine-tuning recipe
    corrects DFT labels with MaterialsProject2020Compatibility to match the pretrained model), so their scale is
    ``"gga_mp2020"`` and no correction is added: adding MP2020 again over-binds oxides by ~0.26 eV/atom on
    MPTS-52 rows (formation-energy MAE 0.017 eV/atom raw vs 0.272 corrected). The ``r2scan`` model predicts raw
    r2SCAN energies.

    Args:
        model: ``"r2scan"`` (r2SCAN scale), ``"0.3.0"``/``"0.2.0"`` (GGA/GGA+U + MP2020 scale, MPtrj), or a
            loaded ``CHGNet``.
        batch_size: structures per forward pass (CHGNet is memory-hungry on CPU above 16).
        device: ``"auto"`` (the rank's CUDA device, else CPU), ``"cpu"``, ``"cuda:1"``, a ``torch.device``; a
            loaded ``CHGNet`` is moved there too.
        energy_scale: override the scale inferred from the model name.
    """

    def __init__(
        self,
        model: str | Any = "r2scan",
        batch_size: int = 16,
        device: Any = "auto",
        energy_scale: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if isinstance(model, str):
            self.name = f"CHGNet-{model}"
            self.model = load_chgnet(model, self.device)
            inferred = R2SCAN if "r2scan" in model.lower() else GGA_MP2020
        else:
            self.model = model.to(self.device)
            self.name = f"CHGNet-{getattr(model, 'version', 'custom')}"
            inferred = R2SCAN if "r2scan" in str(getattr(model, "version", "")).lower() else GGA_MP2020
        self.model.eval()
        self.energy_scale = energy_scale or inferred
        self._batch_size = int(batch_size)
        self._elements = frozenset(Element.from_Z(z).symbol for z in range(1, 95))

    def predict_energies(self, structures: Sequence[Structure]) -> list[float]:
        import torch

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = self.model.predict_structure(list(structures), task="e", batch_size=self._batch_size)
        if isinstance(preds, dict):
            preds = [preds]
        # CHGNet predicts energy per atom
        return [float(np.asarray(p["e"]).reshape(-1)[0]) * len(s) for p, s in zip(preds, structures)]

    def ase_calculator(self) -> Any:
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(sys.stderr):  # "CHGNet will run on cpu"
            return CHGNetCalculator(model=self.model, use_device=str(self.device))

    def predict_efs(self, structures: Sequence[Structure]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Batched energies (eV), forces (eV/Å) and stresses (eV/Å^3), as `CHGNetCalculator` reports them.

        The same quantities as ``CHGNet.predict_structure(task="efs")``, computed for inference: CHGNet's own
        forward takes two backward passes that build second-order graphs (``create_graph=True``, for training on
        forces); here one first-order pass gives forces and stresses together, several times faster on CPU and
        with far less memory. ``tests/test_reward_models.py`` checks the two agree.
        """
        import torch
        from ase import units
        from chgnet.model.model import BatchedGraph

        model, out = self.model, []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for start in range(0, len(structures), self._batch_size):
                chunk = list(structures[start : start + self._batch_size])
                graphs = [model.graph_converter(s).to(self.device) for s in chunk]
                composition = 0 if model.composition_model is None else model.composition_model(graphs)
                batch = BatchedGraph.from_graphs(
                    graphs,
                    bond_basis_expansion=model.bond_basis_expansion,
                    angle_basis_expansion=model.angle_basis_expansion,
                    compute_stress=True,
                )
                energy = model._compute(batch, compute_force=False, compute_stress=False)["e"]
                atoms = torch.tensor([len(s) for s in chunk], dtype=energy.dtype, device=energy.device)
                extensive = energy * atoms if model.is_intensive else energy  # what forces are the gradient of
                grads = torch.autograd.grad(extensive.sum(), [*batch.atom_positions, *batch.strains])
                forces, strains = grads[: len(chunk)], grads[len(chunk) :]
                total = (energy + composition) * (atoms if model.is_intensive else 1)
                for e, f, dstrain, volume in zip(total, forces, strains, batch.volumes):
                    stress_gpa = dstrain * (160.21766208 / volume)  # CHGNet's eV/Å^3 -> GPa, as in its forward
                    out.append(
                        (
                            float(e),
                            -f.detach().cpu().numpy(),
                            stress_gpa.detach().cpu().numpy() * units.GPa,
                        )
                    )
        return out

    def supported_elements(self) -> Iterable[str]:
        return self._elements

    def batch_size(self) -> int:
        return self._batch_size


# --------------------------------------------------------------------------------------------------- matgl
def _matgl_scale(name: str) -> str:
    low = name.lower()
    if "r2scan" in low:
        return "matpes_r2scan" if "matpes" in low else R2SCAN
    if "matpes" in low:
        return "matpes_pbe"
    return GGA


class MatGLEnergyModel(EnergyModel):
    """A matgl potential (M3GNet, TensorNet, CHGNet-matgl) from a local folder or by name, batched.

    Args:
        model: a folder with ``model.json``/``model.pt``/``state.pt`` (e.g.
            ``/work/shared/models/matgl/M3GNet-MP-2021.2.8-PES``), a matgl model name (needs the Hub), or a loaded
            ``matgl.apps.pes.Potential``.
        energy_scale: override the scale inferred from the name (MP-2021 → ``"gga"``, MatPES-PBE → ``"matpes_pbe"``).
        batch_size: structures per forward pass.
        device: where the potential runs (``"auto"``: the rank's CUDA device, else CPU); a loaded one is moved.
    """

    def __init__(
        self, model: str | Path | Any, energy_scale: str | None = None, batch_size: int = 16, device: Any = "auto"
    ) -> None:
        self.device = resolve_device(device)
        try:
            import matgl
        except ImportError as exc:  # pragma: no cover
            raise ModelUnavailableError("matgl is not installed: pip install 'crystalformer-rl[matgl]'") from exc
        if isinstance(model, (str, Path)):
            self.name = Path(str(model)).name
            try:
                self.potential = matgl.load_model(model)
            except Exception as exc:
                raise ModelUnavailableError(
                    f"could not load matgl model {model!r}: {exc}. Offline, pass a local folder containing "
                    "model.json, model.pt and state.pt."
                ) from exc
        else:
            self.potential = model
            self.name = type(model).__name__
        if not hasattr(self.potential, "calc_forces"):
            raise TypeError(f"{self.name} is not a matgl Potential (got {type(self.potential).__name__})")
        self.potential = self.potential.to(self.device)
        self.potential.eval()
        self.energy_scale = energy_scale or _matgl_scale(self.name)
        self._batch_size = int(batch_size)
        inner = self.potential.model
        self._elements = frozenset(inner.element_types)
        from matgl.ext.pymatgen import Structure2Graph

        self._converter = Structure2Graph(element_types=inner.element_types, cutoff=inner.cutoff)

    def predict_energies(self, structures: Sequence[Structure]) -> list[float]:
        import torch
        from torch_geometric.data import Batch

        graphs, lattices = [], []
        for s in structures:
            g, lat, _ = self._converter.get_graph(s)
            graphs.append(g)
            lattices.append(lat[0])
        # graph and lattice together: the Potential moves its inputs only when the lattice is elsewhere
        batch = Batch.from_data_list(graphs).to(self.device)
        lattice = torch.stack(lattices).to(self.device)
        flags = (self.potential.calc_forces, self.potential.calc_stresses)
        self.potential.calc_forces = self.potential.calc_stresses = False
        try:
            with torch.no_grad():
                energies = self.potential(batch, lattice, None)[0]
        finally:
            self.potential.calc_forces, self.potential.calc_stresses = flags
        return [float(e) for e in energies.reshape(-1).cpu()]

    def ase_calculator(self) -> Any:
        from matgl.ext.ase import PESCalculator

        return PESCalculator(self.potential, stress_unit="eV/A3")

    def supported_elements(self) -> Iterable[str]:
        return self._elements

    def batch_size(self) -> int:
        return self._batch_size


# --------------------------------------------------------------------------------------------------- SevenNet
class SevenNetEnergyModel(EnergyModel):
    """SevenNet (``7net-0`` and friends ship in the ``sevenn`` wheel, so they work offline), batched.

    Args:
        model: a pretrained name (``"7net-0"``, ``"7net-l3i5"``, ``"7net-mf-0"``) or a checkpoint path.
        modal: fidelity of multi-fidelity models (``"PBE"`` or ``"R2SCAN"`` for ``7net-mf-0``).
        energy_scale: override; ``"r2scan"`` for modal R2SCAN, ``"gga"`` otherwise.
        device: where the model runs (``"auto"``: the rank's CUDA device, else CPU).
    """

    def __init__(
        self,
        model: str = "7net-0",
        modal: str | None = None,
        energy_scale: str | None = None,
        batch_size: int = 8,
        device: Any = "auto",
    ) -> None:
        self.device = resolve_device(device)
        try:
            from sevenn.calculator import SevenNetCalculator
        except ImportError as exc:
            raise ModelUnavailableError("SevenNet is not installed: pip install 'crystalformer-rl[sevenn]'") from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.calculator = SevenNetCalculator(model, device=self.device, modal=modal)
        self.name = f"SevenNet-{model}" + (f"-{modal}" if modal else "")
        self.modal = modal
        self.energy_scale = energy_scale or (R2SCAN if modal and "r2scan" in modal.lower() else GGA)
        self._batch_size = int(batch_size)
        self._elements = frozenset(Element.from_Z(int(z)).symbol for z in self.calculator.type_map)

    def predict_energies(self, structures: Sequence[Structure]) -> list[float]:
        import sevenn._keys as KEY
        from pymatgen.io.ase import AseAtomsAdaptor
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.loader.dataloader import Collater

        cutoff = self.calculator.cutoff
        data = []
        for s in structures:
            d = AtomGraphData.from_numpy_dict(
                unlabeled_atoms_to_graph(AseAtomsAdaptor.get_atoms(s), cutoff, with_shift=False)
            )
            if self.modal:
                d[KEY.DATA_MODALITY] = self.modal
            data.append(d)
        batch = Collater([], follow_batch=None, exclude_keys=None)(data)
        model = self.calculator.model
        model.set_is_batch_data(True)
        try:
            out = model(batch.to(self.calculator.device))
        finally:
            model.set_is_batch_data(False)
        return [float(e) for e in out[KEY.PRED_TOTAL_ENERGY].detach().cpu().reshape(-1)]

    def ase_calculator(self) -> Any:
        return self.calculator

    def supported_elements(self) -> Iterable[str]:
        return self._elements

    def batch_size(self) -> int:
        return self._batch_size


# --------------------------------------------------------------------------------------------------- optional
class _LazyASEModel(EnergyModel):
    """Adapter for potentials whose package/weights may be missing: everything is imported on construction.
    Subclasses set ``self.device`` (resolved, so a bad device fails as such, before any download) first."""

    package = ""
    extra = ""

    def __init__(self, energy_scale: str = GGA) -> None:
        self.energy_scale = energy_scale
        self.calculator = self._build()

    @abstractmethod
    def _load(self) -> Any: ...

    def _build(self) -> Any:
        try:
            return self._load()
        except ImportError as exc:
            raise ModelUnavailableError(
                f"{self.name} needs the optional package '{self.package}': pip install 'crystalformer-rl[{self.extra}]'"
                f" ({exc})"
            ) from exc
        except Exception as exc:
            raise ModelUnavailableError(
                f"could not fetch the weights of {self.name} ({type(exc).__name__}: {exc}). They are downloaded at "
                "run time; offline, download the checkpoint elsewhere and pass weights_path=<local file>."
            ) from exc

    def predict_energies(self, structures: Sequence[Structure]) -> list[float]:
        return ASEEnergyModel(self.calculator, self.energy_scale).predict_energies(structures)

    def ase_calculator(self) -> Any:
        return self.calculator

    def batch_size(self) -> int:
        return 1


class OrbEnergyModel(_LazyASEModel):
    """Orb (the paper's potential; ``orb-v2`` by default), GGA scale, needs ``orb-models`` and its weights."""

    package = "orb-models"
    extra = "orb"

    def __init__(
        self, model: str = "orb-v2", weights_path: str | None = None, device: Any = "auto", energy_scale: str = GGA
    ) -> None:
        self.model_name, self.weights_path, self.device = model, weights_path, resolve_device(device)
        self.name = f"Orb-{model}"
        super().__init__(energy_scale)

    def _load(self) -> Any:
        from orb_models.forcefield import pretrained
        from orb_models.forcefield.calculator import ORBCalculator

        factory = getattr(pretrained, self.model_name.replace("-", "_"), None)
        if factory is None and hasattr(pretrained, "ORB_PRETRAINED_MODELS"):
            factory = pretrained.ORB_PRETRAINED_MODELS[self.model_name]
        if factory is None:
            raise ValueError(f"unknown Orb model {self.model_name!r}")
        kwargs: dict[str, Any] = {"device": str(self.device)}
        if self.weights_path:
            kwargs["weights_path"] = self.weights_path
        return ORBCalculator(factory(**kwargs), device=str(self.device))


class MACEEnergyModel(_LazyASEModel):
    """MACE-MP (GGA scale); ``model`` is a size name (``"medium"``) downloaded at run time or a local file."""

    package = "mace-torch"
    extra = "mace"

    def __init__(self, model: str = "medium", device: Any = "auto", energy_scale: str = GGA) -> None:
        self.model_name, self.device = model, resolve_device(device)
        self.name = f"MACE-MP-{Path(model).name}"
        super().__init__(energy_scale)

    def _load(self) -> Any:
        from mace.calculators import mace_mp

        return mace_mp(model=self.model_name, device=str(self.device), default_dtype="float64")


class MatterSimEnergyModel(_LazyASEModel):
    """MatterSim (GGA scale); ``load_path`` is a checkpoint name downloaded at run time or a local file."""

    package = "mattersim"
    extra = "mattersim"

    def __init__(
        self, load_path: str = "MatterSim-v1.0.0-1M.pth", device: Any = "auto", energy_scale: str = GGA
    ) -> None:
        self.load_path, self.device = load_path, resolve_device(device)
        self.name = f"MatterSim-{Path(load_path).stem}"
        super().__init__(energy_scale)

    def _load(self) -> Any:
        from mattersim.forcefield import MatterSimCalculator

        return MatterSimCalculator(load_path=self.load_path, device=str(self.device))


def load_energy_model(
    spec: str | EnergyModel | Any | None = None, energy_scale: str | None = None, device: Any = "auto"
) -> EnergyModel:
    """Build an :class:`EnergyModel` from a short spec.

    ``None``/``"chgnet-r2scan"`` → CHGNet r2SCAN (default); ``"chgnet"``/``"chgnet-0.3.0"`` → CHGNet GGA;
    ``"7net-0"``/``"sevennet"``; ``"orb"``/``"orb-v2"``; ``"mace"``; ``"mattersim"``; a matgl folder or name
    (``"M3GNet-..."``/``"TensorNet-..."``); an :class:`EnergyModel`; or an ASE calculator (then ``energy_scale``
    is required). ``device`` applies to models built from a spec (``"auto"``: the rank's CUDA device, else CPU);
    an :class:`EnergyModel` or ASE calculator stays where it was built.
    """
    if isinstance(spec, EnergyModel):
        if energy_scale is not None and energy_scale != spec.energy_scale:
            spec.energy_scale = energy_scale
        return spec
    if spec is None or isinstance(spec, (str, Path)):
        device = resolve_device(device)  # a bad device fails as such, before any weights are loaded
    if spec is None or (isinstance(spec, str) and spec.lower() in {"chgnet-r2scan", "r2scan"}):
        return CHGNetEnergyModel("r2scan", energy_scale=energy_scale, device=device)
    if isinstance(spec, (str, Path)):
        s = str(spec)
        low = s.lower()
        if low in {"chgnet", "chgnet-0.3.0", "chgnet-0.2.0"}:
            name = low.split("-", 1)[1] if "-" in low else "0.3.0"
            return CHGNetEnergyModel(name, energy_scale=energy_scale, device=device)
        if low.startswith("7net") or low == "sevennet":
            return SevenNetEnergyModel("7net-0" if low == "sevennet" else s, energy_scale=energy_scale, device=device)
        if low.startswith("orb"):
            return OrbEnergyModel("orb-v2" if low == "orb" else s, energy_scale=energy_scale or GGA, device=device)
        if low.startswith("mace"):
            return MACEEnergyModel(energy_scale=energy_scale or GGA, device=device)
        if low.startswith("mattersim"):
            return MatterSimEnergyModel(energy_scale=energy_scale or GGA, device=device)
        return MatGLEnergyModel(s, energy_scale=energy_scale, device=device)
    if hasattr(spec, "get_potential_energy") or hasattr(spec, "calculate"):
        if energy_scale is None:
            raise ValueError(
                f"an ASE calculator ({type(spec).__name__}) needs an explicit energy_scale, e.g. 'gga' for an "
                "MPtrj-trained potential or 'r2scan'; comparing energies on different scales against the hull "
                "gives errors of eV/atom"
            )
        return ASEEnergyModel(spec, energy_scale=energy_scale)
    raise TypeError(f"cannot make an energy model from {type(spec).__name__}")


# --------------------------------------------------------------------------------------------------- MP2020
def _mp_elements() -> frozenset[str]:
    global _MP_ELEMENTS
    if _MP_ELEMENTS is None:
        from pymatgen.io.vasp.sets import MPRelaxSet

        _MP_ELEMENTS = frozenset(MPRelaxSet.CONFIG["POTCAR"])
    return _MP_ELEMENTS


def mp2020_corrected_energies(structures: Sequence[Structure], energies: Sequence[float]) -> list[float | str]:
    """Apply MaterialsProject2020Compatibility to GGA-scale MLIP energies, like the reference code.

    Each candidate becomes a ``ComputedStructureEntry`` with the parameters MP's own calculation would have had
    (MPRelaxSet POTCARs, Hubbard U on the transition metals of oxides/fluorides, ``run_type`` GGA or GGA+U); the
    compatibility scheme then adds the anion and GGA/GGA+U mixing corrections. Returns the corrected total
    energy, or a string explaining why the structure cannot be corrected (e.g. an element MP has no data for).
    """
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.vasp.sets import MPRelaxSet

    compat = MaterialsProject2020Compatibility(check_potcar=False)
    u_table = MPRelaxSet.CONFIG["INCAR"]["LDAUU"]
    potcars = MPRelaxSet.CONFIG["POTCAR"]
    known = _mp_elements()
    out: list[float | str] = []
    for s, e in zip(structures, energies):
        symbols = [el.symbol for el in s.composition.elements]
        missing = sorted(set(symbols) - known)
        if missing:
            out.append(f"no MP2020/MPRelaxSet data for element(s) {', '.join(missing)}")
            continue
        anion = max(s.composition.elements, key=lambda el: el.X if math.isfinite(el.X) else -1).symbol
        hubbards = {el: float(u_table.get(anion, {}).get(el, 0.0)) for el in symbols}
        hubbards = {k: v for k, v in hubbards.items() if v > 0}
        params = {
            "run_type": "GGA+U" if hubbards else "GGA",
            "is_hubbard": bool(hubbards),
            "hubbards": hubbards,
            "potcar_symbols": [f"PBE {potcars[el]}" for el in symbols],
        }
        entry = ComputedStructureEntry(s, float(e), parameters=params, correction=0.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                processed = compat.process_entry(entry, on_error="raise")
        except (CompatibilityError, ValueError, KeyError) as exc:
            out.append(f"MP2020 correction failed: {exc}")
            continue
        if processed is None:
            out.append("MP2020 compatibility rejected the entry")
            continue
        out.append(float(processed.energy))
    return out
