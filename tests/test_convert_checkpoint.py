"""Official CrystalFormer checkpoints: restricted unpickling, name mapping, Hub cache, command line."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crystalformer_rl.commands import main, parse_args  # noqa: E402
from crystalformer_rl.commands.convert import run_convert  # noqa: E402
from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration  # noqa: E402
from crystalformer_rl.modeling_crystalformer.convert_crystalformer_checkpoint import (  # noqa: E402
    haiku_to_torch_names,
    infer_config,
    load_checkpoint_pickle,
    load_crystalformer_checkpoint,
)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARITY = SHARED / "fixtures" / "reference_parity"
needs_parity_fixture = pytest.mark.skipif(not (PARITY / "checkpoint.pkl").exists(), reason="no ../shared fixture")


def tiny_config(**kwargs):
    defaults = {"num_layers": 2, "num_heads": 2, "key_size": 8, "model_size": 16, "embed_size": 8, "h0_size": 16}
    return CrystalFormerConfig(**{**defaults, **kwargs})


def example_inputs(dtype=torch.float32):
    W = torch.tensor([[1, 3, 5, 0, 0], [2, 0, 0, 0, 0]])
    A = torch.tensor([[8, 26, 8, 0, 0], [3, 0, 0, 0, 0]])
    XYZ = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=dtype) * (W > 0)[..., None]
    L = torch.tensor([[2.0, 2.0, 2.0, 1.57, 1.57, 1.57], [3.0, 3.1, 3.2, 1.4, 1.5, 1.6]], dtype=dtype)
    return {"G": torch.tensor([225, 1]), "W": W, "A": A, "XYZ": XYZ, "L": L}


# ---------------------------------------------------------------------------------------------------------
# Writing official-format pickles without JAX (the arrays reference jax._src.array._reconstruct_array)
# ---------------------------------------------------------------------------------------------------------


class _FakeJaxArray:
    """Pickles like a JAX array: jax._src.array._reconstruct_array(fun, args, arr_state, aval_state)."""

    def __init__(self, array):
        self.array = np.asarray(array)

    def __reduce__(self):
        fun, args, state = self.array.__reduce__()
        return sys.modules["jax._src.array"]._reconstruct_array, (fun, args, state, {"weak_type": False})


def _fake_jax_modules():
    modules = {
        name: types.ModuleType(name)
        for name in ("jax", "jax._src", "jax._src.array", "optax", "optax._src", "optax._src.base")
    }

    def _reconstruct_array(fun, args, arr_state, aval_state):
        raise AssertionError("only used for pickling")

    _reconstruct_array.__module__ = "jax._src.array"
    _reconstruct_array.__qualname__ = "_reconstruct_array"
    modules["jax._src.array"]._reconstruct_array = _reconstruct_array

    class EmptyState(tuple):
        __module__ = "optax._src.base"
        __qualname__ = "EmptyState"

        def __new__(cls):
            return super().__new__(cls, ())

        def __getnewargs__(self):
            return ()

    modules["optax._src.base"].EmptyState = EmptyState
    return modules


def write_official_checkpoint(path, model: CrystalFormerForCrystalGeneration):
    """Inverse of the converter: a torch model -> {"params": haiku dict, "opt_state": ...} pickle."""
    state = model.state_dict()
    haiku: dict = {}
    pieces: dict = {}
    for haiku_name, (torch_name, transpose, part) in haiku_to_torch_names(model.config).items():
        pieces.setdefault(torch_name, []).append((part, haiku_name, transpose))
    for torch_name, parts in pieces.items():
        chunks = torch.chunk(state[torch_name], len(parts), dim=0)
        for (part, haiku_name, transpose), chunk in zip(sorted(parts), chunks):
            array = chunk.detach().numpy().astype(np.float32)
            module, name = haiku_name.rsplit("/", 1)
            haiku.setdefault(module, {})[name] = _FakeJaxArray(array.T if transpose else array)
    modules = _fake_jax_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        with open(path, "wb") as f:
            pickle.dump({"params": haiku, "opt_state": (modules["optax._src.base"].EmptyState(),)}, f)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# ---------------------------------------------------------------------------------------------------------
# Restricted unpickler
# ---------------------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def test_refuses_unexpected_classes(tmp_path):
    sentinel = tmp_path / "executed"
    for payload, name in ((_Payload(sentinel), "os.makedirs"), (Counter(a=1), "collections.Counter")):
        path = tmp_path / "bad.pkl"
        with open(path, "wb") as f:
            pickle.dump({"params": {"~": {}}, "extra": payload}, f)
        with pytest.raises(pickle.UnpicklingError, match=name.split(".")[-1]):
            load_checkpoint_pickle(path)
    assert not sentinel.exists()  # the payload never ran


def test_refuses_object_arrays(tmp_path):
    path = tmp_path / "objects.pkl"
    with open(path, "wb") as f:
        pickle.dump({"params": {"~": {"g_embeddings": np.array([1, "x"], dtype=object)}}}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint_pickle(path)


@needs_parity_fixture
def test_reads_the_official_fixture():
    checkpoint = load_checkpoint_pickle(PARITY / "checkpoint.pkl")
    params = checkpoint["params"]
    assert params["~"]["g_embeddings"].shape == (230, 16)
    assert params["multi_head_attention_1/query"]["w"].shape == (32, 64)
    assert all(isinstance(a, np.ndarray) for entries in params.values() for a in entries.values())
    assert type(checkpoint["opt_state"][1]).__name__ == "ScaleByAdamState"
    config = infer_config(params, json.loads((PARITY / "config.json").read_text()))
    assert (config.num_hidden_layers, config.num_attention_heads, config.head_dim, config.hidden_size) == (
        2,
        4,
        16,
        32,
    )
    assert (config.h0_size, config.embed_size, config.num_lattice_components) == (64, 16, 4)
    with pytest.raises(ValueError, match="num_hidden_layers"):  # a config that contradicts the shapes
        infer_config(params, {"num_layers": 3, "num_heads": 4})


# ---------------------------------------------------------------------------------------------------------
# Round trips through the official format
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"h0_size": 0},
        {"position_embedding_type": "absolute", "n_max": 12},
        {"num_layers": 3, "key_size": 64, "num_heads": 1},
    ],
)
def test_official_format_roundtrip(tmp_path, kwargs):
    torch.manual_seed(0)
    model = CrystalFormerForCrystalGeneration(tiny_config(**kwargs)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    path = tmp_path / "epoch_000010.pkl"
    write_official_checkpoint(path, model)
    # heads x head_dim is not inferable from shapes: give it, the rest is inferred
    given = {"num_heads": model.config.num_attention_heads, "key_size": model.config.head_dim}
    loaded = load_crystalformer_checkpoint(path, config=given)
    for key in ("n_max", "h0_size", "position_embedding_type", "num_hidden_layers", "hidden_size", "embed_size"):
        assert getattr(loaded.config, key) == getattr(model.config, key), key
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    inputs = example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(**inputs).logp, model.log_prob(**inputs).logp)


@needs_parity_fixture
def test_loads_from_a_prefilled_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--zdcao--CrystalFormer"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / "alex20" / "PBE" / "epoch_005500.pkl"
    target.parent.mkdir(parents=True)
    shutil.copy(PARITY / "checkpoint.pkl", target)
    config = json.loads((PARITY / "config.json").read_text())

    local = load_crystalformer_checkpoint(PARITY / "checkpoint.pkl", config=config)
    from crystalformer_rl.pretrained import OFFICIAL_ALEX20

    for reference in (
        "alex20",
        OFFICIAL_ALEX20,  # the exported constant is a name the loader takes (it once was not)
        "zdcao/CrystalFormer/alex20/PBE/epoch_005500.pkl",
        "hf://zdcao/CrystalFormer/alex20/PBE/epoch_005500.pkl",
    ):
        model = load_crystalformer_checkpoint(reference, config=config, cache_dir=tmp_path)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in local.state_dict().items())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):  # not in the cache, offline: a clear Hub error, no network
        load_crystalformer_checkpoint("mp20", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_crystalformer_checkpoint(tmp_path / "missing.pkl")


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


@needs_parity_fixture
def test_convert_command_line(tmp_path):
    config_path = tmp_path / "reference_config.json"
    config_path.write_text((PARITY / "config.json").read_text())
    model = run_convert(
        *parse_args(
            "convert",
            [str(PARITY / "checkpoint.pkl"), "--output_dir", str(tmp_path / "out"), "--config", str(config_path)],
        )
    )
    assert (tmp_path / "out" / "model.safetensors").exists()
    card = (tmp_path / "out" / "README.md").read_text()  # the likelihood convention is stated with the weights
    assert "reserve_lattice_site: true" in card and "reserve_lattice_site=False" in card
    reloaded = CrystalFormerForCrystalGeneration.from_pretrained(tmp_path / "out")
    assert reloaded.config.num_attention_heads == 4 and reloaded.config.head_dim == 16
    tokens = np.load(PARITY / "tokens.npz")
    batch = {key: tokens[key][:4] for key in ("G", "L", "XYZ", "A", "W")}
    with torch.no_grad():
        torch.testing.assert_close(reloaded.log_prob(**batch).logp, model.log_prob(**batch).logp)
    # overrides on the command line, and main()
    main(
        [
            "convert",
            str(PARITY / "checkpoint.pkl"),
            str(tmp_path / "out2"),
            "--num_heads",
            "4",
            "--key_size",
            "16",
            "--dtype",
            "float64",
        ]
    )
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["num_attention_heads"] == 4


def test_module_is_runnable():
    result = subprocess.run(
        [sys.executable, "-m", "crystalformer_rl.cli", "convert", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "--output_dir" in result.stdout
