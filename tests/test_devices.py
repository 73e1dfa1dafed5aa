"""Device selection of reward and energy models: the one rule (`resolve_device`) and that every model follows it.

This machine has no GPU, so the CUDA branch of the rule is tested with torch.cuda's answers patched; the models
themselves are checked to land where the rule sends ``device="auto"`` (the CPU here, the rank's GPU on a GPU host).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystalformer_rl.devices import DeviceError, rank_cuda_index, resolve_device
from crystalformer_rl.errors import UsageError
from crystalformer_rl.reward_models import (
    MACEEnergyModel,
    MatterSimEnergyModel,
    ModelUnavailableError,
    OrbEnergyModel,
    load_energy_model,
)


MATGL = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "matgl"
CPU = torch.device("cpu")
AUTO = resolve_device("auto")  # where the models must land: the CPU here, the GPU of a GPU host


def nacl() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def module_device(module: torch.nn.Module) -> torch.device:
    (device,) = {t.device for t in [*module.parameters(), *module.buffers()]}
    return device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Four visible GPUs, torch's current one being cuda:2; nothing is allocated on them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------------------------- the rule
def test_explicit_cpu_forms(no_cuda):
    for device in ["cpu", "CPU", " cpu ", "cpu:0", torch.device("cpu")]:
        assert resolve_device(device) == CPU


def test_auto_is_cpu_without_cuda(no_cuda, monkeypatch):
    assert resolve_device() == CPU
    assert resolve_device("auto") == resolve_device("AUTO") == resolve_device(None) == CPU
    monkeypatch.setenv("LOCAL_RANK", "3")  # a launcher's rank does not matter without CUDA
    assert resolve_device("auto") == CPU


def test_bad_device_is_one_line_value_error(no_cuda):
    for device in ["gpu", "cuda:x", "cuda:-1", "", "meta", "mps", 3.5, True, -1, ["cpu"]]:
        with pytest.raises(DeviceError) as info:
            resolve_device(device)
        assert isinstance(info.value, ValueError) and isinstance(info.value, UsageError)  # cli prints one line
        assert "\n" not in str(info.value) and str(info.value)


def test_cuda_requested_without_cuda(no_cuda):
    for device in ["cuda", "cuda:0", "CUDA:1", torch.device("cuda", 0), 0]:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device(device)


def test_auto_follows_local_rank(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 2)  # no LOCAL_RANK: torch's current device
    fake_cuda.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # a bare "cuda" is the rank's device too
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    fake_cuda.setenv("LOCAL_RANK", "5")  # more ranks than GPUs, or one GPU per process: wrap around
    assert rank_cuda_index() == 1
    fake_cuda.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_explicit_cuda_index(fake_cuda):
    fake_cuda.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda:3") == torch.device("cuda", 3)  # explicit beats the rank
    assert resolve_device(3) == torch.device("cuda", 3)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert resolve_device("cpu") == CPU
    with pytest.raises(DeviceError, match="only 4 CUDA device"):
        resolve_device("cuda:4")


def test_bad_local_rank(fake_cuda):
    for value in ["x", "-1"]:
        fake_cuda.setenv("LOCAL_RANK", value)
        with pytest.raises(DeviceError, match="LOCAL_RANK"):
            resolve_device("auto")


# ----------------------------------------------------------------------------------------------- the models
@pytest.mark.parametrize("name", ["r2scan", "0.3.0"])
def test_chgnet_on_auto_device(name):
    from crystalformer_rl.reward_models import CHGNetEnergyModel

    model = CHGNetEnergyModel(name)
    assert model.device == AUTO and module_device(model.model) == AUTO
    assert model.ase_calculator().device == "cpu"
    assert CHGNetEnergyModel(name, device=torch.device("cpu")).model is model.model  # one copy per device
    ((energy, forces, stress),) = model.predict_efs([nacl()])
    assert math.isfinite(energy) and forces.shape == (2, 3) and stress.shape == (3, 3)


def test_cuda_fails_before_loading(no_cuda):
    from crystalformer_rl.reward_models import BandGapReward, CHGNetEnergyModel, DielectricReward, EhullReward

    for build in [
        lambda: CHGNetEnergyModel("r2scan", device="cuda"),
        lambda: load_energy_model("7net-0", device="cuda:1"),
        lambda: load_energy_model(MATGL / "M3GNet-MP-2021.2.8-PES", device="cuda"),
        lambda: EhullReward(device="cuda"),
        lambda: BandGapReward(device="cuda"),
        lambda: DielectricReward(device="cuda"),
    ]:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            build()


@pytest.mark.parametrize(
    "folder", ["M3GNet-MP-2021.2.8-PES", "M3GNet-MatPES-PBE-v2025.1-PES", "TensorNet-MatPES-PBE-v2025.1-PES"]
)
def test_matgl_potential_on_auto_device(folder):
    if not (MATGL / folder).exists():
        pytest.skip("shared matgl models missing")
    model = load_energy_model(MATGL / folder)
    assert model.device == AUTO and module_device(model.potential) == AUTO
    (energy,) = model.predict_energies([nacl()])
    assert math.isfinite(energy)


@pytest.mark.skipif(importlib.util.find_spec("sevenn") is None, reason="sevenn not installed")
def test_sevennet_on_auto_device():
    model = load_energy_model("7net-0")
    assert model.device == AUTO and model.calculator.device == AUTO
    assert module_device(model.calculator.model) == AUTO


def test_band_gap_on_auto_device():
    from crystalformer_rl.reward_models import BandGapReward

    reward = BandGapReward()
    assert reward.device == AUTO and module_device(reward.model.model) == AUTO
    assert BandGapReward(device="cpu").model is reward.model  # the shipped model is shared per device
    (gap,) = reward.compute([nacl()])
    assert gap > 3


def test_dielectric_on_auto_device():
    from crystalformer_rl.reward_models import DielectricReward, FigureOfMeritReward

    reward = DielectricReward()
    assert reward.device == AUTO and module_device(reward.model) == AUTO
    assert reward.featurizer.device == AUTO and reward.band_gap.device == AUTO
    (eps,) = reward.compute([nacl()])
    assert 1 < eps < 10
    fom = FigureOfMeritReward(device="cpu")
    assert fom.dielectric.device == fom.band_gap.device == AUTO


def test_ehull_passes_device_to_its_potentials():
    from crystalformer_rl.reward_models import EhullReward, StabilityReward

    reward = EhullReward(device="auto")
    assert reward.device == AUTO and reward.calculator.device == AUTO
    assert reward.fallback is not None and reward.fallback.device == AUTO
    assert StabilityReward(device="cpu").children[0].device == CPU


@pytest.mark.parametrize("cls", [OrbEnergyModel, MACEEnergyModel, MatterSimEnergyModel])
def test_download_adapters_resolve_device_first(cls, fake_cuda):
    """The rank's device reaches the loader, and a failed load is still a ModelUnavailableError."""
    seen = []

    def load(self):
        seen.append(self.device)
        raise ImportError("not installed (test)")

    fake_cuda.setattr(cls, "_load", load)
    fake_cuda.setenv("LOCAL_RANK", "1")
    with pytest.raises(ModelUnavailableError):
        cls()
    with pytest.raises(ModelUnavailableError):
        cls(device="cuda:3")
    assert seen == [torch.device("cuda", 1), torch.device("cuda", 3)]
    with pytest.raises(DeviceError):  # a bad device is reported as such, not as a missing model
        cls(device="gpu")
    assert len(seen) == 2


@pytest.mark.parametrize(
    "cls, spec, package",
    [
        (OrbEnergyModel, "orb", "orb_models"),
        (MACEEnergyModel, "mace", "mace"),
        (MatterSimEnergyModel, "mattersim", "mattersim"),
    ],
)
def test_download_adapters_offline(cls, spec, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} installed: the error path would be the (offline) weight download")
    for device in ["auto", "cpu", torch.device("cpu")]:
        with pytest.raises(ModelUnavailableError, match="pip install"):
            cls(device=device)
    with pytest.raises(ModelUnavailableError):
        load_energy_model(spec, device="auto")
    with pytest.raises(DeviceError):
        load_energy_model(spec, device="gpu")
