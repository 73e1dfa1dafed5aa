"""Convert an official CrystalFormer checkpoint (JAX/haiku pickle) to a Hugging Face model, without JAX.

The official checkpoints are pickles of ``{"params": haiku params, "opt_state": optax state}`` whose arrays are
JAX arrays. A pickle is a program, so it is read with a restricted unpickler that only resolves an explicit
allow-list of globals (numpy array reconstruction, JAX's array wrapper, optax's state named-tuples) and
refuses anything else.

Usage (the command line is :mod:`crystalformer_rl.commands.convert`)::

    crystalformer-rl convert alex20 crystalformer-alex20
    crystalformer-rl convert path/to/epoch_005500.pkl --output_dir out --config reference_config.json

or from Python: ``load_crystalformer_checkpoint("alex20")`` (or ``load_model("alex20")``).

Haiku names modules in creation order (first ``linear``, then ``linear_1``, ...). The reference creates, in
order: the first-Wyckoff MLP (2 Linear, only if ``h0_size > 0``), the W/A/X/Y/Z token projections (5 Linear),
then per layer a LayerNorm, the attention (``multi_head_attention{_l}/{query,key,value,linear}``), a LayerNorm
and the two MLP Linear, and finally a LayerNorm and the output Linear. Linear weights are stored (in, out).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np
import torch

from ..crystallography import TOKENS_PER_SITE
from .configuration_crystalformer import LATTICE_OUTPUTS_PER_COMPONENT, CrystalFormerConfig


HUB_REPO = "zdcao/CrystalFormer"
OFFICIAL_CHECKPOINTS = {
    "alex20": (HUB_REPO, "alex20/PBE/epoch_005500.pkl"),
    "alex20-rl-ehull": (HUB_REPO, "alex20/RL-ehull/epoch_000195.pkl"),
    "alex20-rl-dielectric": (HUB_REPO, "alex20/RL-dielectric/epoch_000100.pkl"),
    "mp20": (HUB_REPO, "mp20/epoch_003800.pkl"),  # legacy v0.3 architecture: absolute positions
}


# ---------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------------------


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


def _plain_array(array) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise pickle.UnpicklingError("checkpoint arrays must be plain numeric numpy arrays")
    return array


def _rebuild_jax_array(fun, args, arr_state, aval_state):
    """Stand-in for ``jax._src.array._reconstruct_array``: rebuild the numpy array, drop JAX's metadata."""
    if fun is not _numpy_reconstruct():
        raise pickle.UnpicklingError("unexpected array constructor inside a pickled JAX array")
    array = fun(*args)
    array.__setstate__(arr_state)
    return _plain_array(array)


class OptaxState(tuple):
    """Stand-in for optax's NamedTuple optimiser states (`EmptyState`, `ScaleByAdamState`, ...): a plain tuple
    that remembers the original class name. The optimiser state is not needed for conversion."""

    optax_name = "OptaxState"

    def __new__(cls, *fields):
        return super().__new__(cls, fields)

    def __repr__(self):
        return f"{self.optax_name}{tuple.__repr__(self)}"


def _optax_stub(name: str):
    return type(name, (OptaxState,), {"optax_name": name, "__module__": __name__})


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct, scalar = _numpy_reconstruct(), _numpy_scalar()
    allowed = {
        ("jax._src.array", "_reconstruct_array"): _rebuild_jax_array,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module, names in {
        "optax._src.base": ("EmptyState",),
        "optax._src.transform": ("ScaleByAdamState", "ScaleByScheduleState", "ScaleState", "TraceState"),
        "optax._src.clipping": ("ClipByGlobalNormState", "ClipState"),
    }.items():
        for name in names:
            allowed[(module, name)] = _optax_stub(name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_globals` and refuses everything else."""

    def __init__(self, file, allowed: dict[tuple[str, str], object] | None = None):
        super().__init__(file)
        self._allowed = _allowed_globals() if allowed is None else allowed

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': not in the allow-list of a CrystalFormer checkpoint"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a CrystalFormer checkpoint")


def load_checkpoint_pickle(path: str | os.PathLike) -> dict:
    """Read an official checkpoint safely. Returns ``{"params": {module: {name: ndarray}}, "opt_state": ...}``."""
    with open(path, "rb") as f:
        data = f.read()
    checkpoint = RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(checkpoint, dict) or "params" not in checkpoint:
        raise ValueError(f"{path} is not a CrystalFormer checkpoint (expected a dict with 'params')")
    params = checkpoint["params"]
    if not isinstance(params, dict):
        raise ValueError(f"{path}: 'params' must be a dict of haiku modules")
    for module, entries in params.items():
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: params[{module!r}] must be a dict of arrays")
        for name, value in entries.items():
            entries[name] = _plain_array(np.asarray(value) if np.isscalar(value) else value)
    return checkpoint


# ---------------------------------------------------------------------------------------------------------
# Config inference and name mapping
# ---------------------------------------------------------------------------------------------------------


def _as_config_kwargs(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, CrystalFormerConfig):
        return config.to_dict()
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            config = json.load(f)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a CrystalFormerConfig, a dict or a JSON path, got {type(config)}")
    return dict(config)


def infer_config(params: dict, config=None) -> CrystalFormerConfig:
    """Build a config from the parameter shapes; values in `config` (HF or reference names) take precedence.

    Shapes determine embed_size, atom/wyck types, h0_size, hidden_size, Nf, widening factor, number of layers,
    Kl (from the output width), the position-embedding type and, for absolute positions, n_max. They do not
    determine how the attention width splits into heads x head_dim (default key size 64, as in every
    published model) nor Kx (default 16) when those are not given.
    """
    given = _as_config_kwargs(config)
    given = {CrystalFormerConfig.attribute_map.get(k, k): v for k, v in given.items()}
    top = params["~"]
    inferred: dict = {}
    embed_size = top["g_embeddings"].shape[1]
    inferred["embed_size"] = embed_size
    inferred["atom_types"] = top["a_embeddings"].shape[0]
    inferred["wyck_types"] = top["w_embeddings"].shape[0]
    inferred["h0_size"] = 0 if "w_params" in top else params["linear"]["w"].shape[1]
    if "positional_embeddings" in top:
        inferred["position_embedding_type"] = "absolute"
        inferred["n_max"] = top["positional_embeddings"].shape[0] // TOKENS_PER_SITE
    else:
        inferred["position_embedding_type"] = "rope"
    num_layers = sum(1 for k in params if re.fullmatch(r"multi_head_attention(_\d+)?/query", k))
    inferred["num_hidden_layers"] = num_layers
    first_proj = "linear_2" if inferred["h0_size"] > 0 else "linear"
    hidden = params[first_proj]["w"].shape[1]
    inferred["hidden_size"] = hidden
    x_proj = f"linear_{4 if inferred['h0_size'] > 0 else 2}"
    inferred["num_fourier_frequencies"] = (params[x_proj]["w"].shape[0] - embed_size) // 2
    fc1 = f"linear_{(7 if inferred['h0_size'] > 0 else 5)}"
    inferred["widening_factor"] = params[fc1]["w"].shape[1] // hidden
    inner = params["multi_head_attention/query"]["w"].shape[1]
    head_dim = given.get("head_dim")
    if head_dim is None:
        heads = given.get("num_attention_heads")
        head_dim = inner // heads if heads else (64 if inner % 64 == 0 else inner)
    inferred["head_dim"] = head_dim
    inferred["num_attention_heads"] = given.get("num_attention_heads", inner // head_dim)
    head_name = f"linear_{(5 if inferred['h0_size'] > 0 else 3) + 2 * num_layers + 2}"
    output_size = params[head_name]["w"].shape[1]
    kl, rest = divmod(output_size - inferred["atom_types"], LATTICE_OUTPUTS_PER_COMPONENT)
    if rest == 0 and kl > 0:
        inferred["num_lattice_components"] = kl

    ignored = ("model_type", "transformers_version", "seed")  # `seed` appears in reference config files
    merged = {**inferred, **{k: v for k, v in given.items() if k not in ignored}}
    for key, value in inferred.items():
        if key in given and given[key] != value:
            raise ValueError(f"config says {key}={given[key]!r} but the checkpoint's shapes give {value!r}")
    if merged["num_attention_heads"] * merged["head_dim"] != inner:
        raise ValueError(
            f"num_attention_heads * head_dim = {merged['num_attention_heads']} * {merged['head_dim']} "
            f"does not match the attention width {inner}"
        )
    return CrystalFormerConfig(**merged)


def haiku_to_torch_names(config: CrystalFormerConfig) -> dict[str, tuple[str, bool, int]]:
    """Map ``"haiku_module/param"`` to ``(state-dict key, transpose, part)`` for a given config. Several haiku
    arrays can fill one PyTorch tensor: the query, key and value projections are concatenated, in `part` order,
    along the output dimension of the fused ``qkv_proj``."""
    counters: dict[str, int] = defaultdict(int)

    def next_module(kind: str) -> str:
        index = counters[kind]
        counters[kind] += 1
        return kind if index == 0 else f"{kind}_{index}"

    mapping: dict[str, tuple[str, bool, int]] = {}

    def linear(torch_name: str, haiku_name: str | None = None, part: int = 0):
        name = haiku_name or next_module("linear")
        mapping[f"{name}/w"] = (f"{torch_name}.weight", True, part)
        mapping[f"{name}/b"] = (f"{torch_name}.bias", False, part)

    def layer_norm(torch_name: str):
        name = next_module("layer_norm")
        mapping[f"{name}/scale"] = (f"{torch_name}.weight", False, 0)
        mapping[f"{name}/offset"] = (f"{torch_name}.bias", False, 0)

    for table in ("g", "w", "a"):
        mapping[f"~/{table}_embeddings"] = (f"transformer.{table}_embed.weight", False, 0)
    if config.position_embedding_type == "absolute":
        mapping["~/positional_embeddings"] = ("transformer.pos_embed", False, 0)
    if config.h0_size > 0:
        linear("h0_fc1")
        linear("h0_fc2")
    else:
        mapping["~/w_params"] = ("w_params", False, 0)
    for token in ("w", "a", "x", "y", "z"):
        linear(f"transformer.proj_{token}")
    for layer in range(config.num_hidden_layers):
        prefix = f"transformer.layers.{layer}"
        layer_norm(f"{prefix}.ln_attn")
        attention = next_module("multi_head_attention")
        for part, haiku_name in enumerate(("query", "key", "value")):
            linear(f"{prefix}.attn.qkv_proj", f"{attention}/{haiku_name}", part)
        linear(f"{prefix}.attn.o_proj", f"{attention}/linear")
        layer_norm(f"{prefix}.ln_mlp")
        linear(f"{prefix}.mlp.fc1")
        linear(f"{prefix}.mlp.fc2")
    layer_norm("transformer.final_ln")
    linear("head")
    return mapping


def convert_params(params: dict, config: CrystalFormerConfig, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Haiku params -> PyTorch state dict (every array used exactly once, shapes checked by the caller)."""
    mapping = haiku_to_torch_names(config)
    flat = {f"{module}/{name}": array for module, entries in params.items() for name, array in entries.items()}
    missing = sorted(set(mapping) - set(flat))
    unexpected = sorted(set(flat) - set(mapping))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the config: missing {missing}, unexpected {unexpected}")
    parts: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for haiku_name, (torch_name, transpose, part) in mapping.items():
        array = np.asarray(flat[haiku_name])
        parts[torch_name][part] = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
    return {name: torch.cat([p[i] for i in sorted(p)], dim=0).to(dtype) for name, p in parts.items()}


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def resolve_checkpoint_path(path_or_hub_file: str | os.PathLike, **hub_kwargs) -> Path:
    """A local file, an alias of :data:`OFFICIAL_CHECKPOINTS`, or ``[hf://]owner/repo/path/in/repo.pkl``
    (downloaded or found in the HF cache through `huggingface_hub.hf_hub_download`)."""
    text = str(path_or_hub_file)
    if os.path.isfile(text):
        return Path(text)
    if isinstance(path_or_hub_file, Path) or os.path.isabs(text) or text.startswith((".", "~")):
        raise FileNotFoundError(f"no checkpoint file at {text}")
    if text in OFFICIAL_CHECKPOINTS:
        repo_id, filename = OFFICIAL_CHECKPOINTS[text]
    else:
        hub = text.removeprefix("hf://")
        parts = hub.split("/")
        if len(parts) < 3:
            raise FileNotFoundError(
                f"{text!r} is neither a file, an alias ({', '.join(OFFICIAL_CHECKPOINTS)}) nor 'owner/repo/file.pkl'"
            )
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, **hub_kwargs))


def load_crystalformer_checkpoint(path_or_hub_file, config=None, model_class=None, dtype=torch.float32, **hub_kwargs):
    """Read an official checkpoint and return a `CrystalFormerForCrystalGeneration` (in eval mode)."""
    if model_class is None:
        from .modeling_crystalformer import CrystalFormerForCrystalGeneration as model_class
    path = resolve_checkpoint_path(path_or_hub_file, **hub_kwargs)
    params = load_checkpoint_pickle(path)["params"]
    config = infer_config(params, config)
    state_dict = convert_params(params, config, dtype=dtype)
    _check_finite(state_dict, path)
    model = model_class(config).to(dtype)
    expected = model.state_dict()
    for key, tensor in state_dict.items():
        if expected[key].shape != tensor.shape:
            raise ValueError(
                f"{key}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)
    _set_converted_card(model, path_or_hub_file)  # the card `save_pretrained` writes
    return model.eval()


def _set_converted_card(model, source) -> None:
    model.model_card_text = converted_model_card_text(model, str(source))
    base = _hub_repo_of(source)
    model.model_card_metadata = {"base_model": base} if base else None


def _hub_repo_of(path_or_hub_file) -> str | None:
    """The Hub repository a checkpoint name points into (``owner/repo``), ``None`` for a local file."""
    text = str(path_or_hub_file)
    if text in OFFICIAL_CHECKPOINTS:
        return OFFICIAL_CHECKPOINTS[text][0]
    parts = text.removeprefix("hf://").split("/")
    if isinstance(path_or_hub_file, Path) or os.path.exists(text) or len(parts) < 3:
        return None
    return "/".join(parts[:2])


def _check_finite(state_dict: dict[str, torch.Tensor], path) -> None:
    """Refuse weights with NaN or infinite values: such a model samples nothing but NaN."""
    bad = [name for name, tensor in state_dict.items() if not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(
            f"{path}: the checkpoint holds NaN or infinite weights ({len(bad)} of {len(state_dict)} tensors, "
            f"e.g. {bad[0]}); refusing to convert it"
        )


def write_converted_model_card(model, source: str, output_dir: str | os.PathLike) -> Path:
    """Write ``README.md`` of a converted checkpoint (:func:`converted_model_card_text`, with the Hub's metadata),
    replacing any card in ``output_dir``."""
    from .hub_crystalformer import MODEL_CARD_FILE, write_model_card

    _set_converted_card(model, source)
    (Path(output_dir) / MODEL_CARD_FILE).unlink(missing_ok=True)
    return write_model_card(model, output_dir)


def converted_model_card_text(model, source: str) -> str:
    """The text of a converted checkpoint's card: where it came from, its size, and the likelihood convention it
    loads with (``reserve_lattice_site``), the one place where this port deliberately differs from the reference."""
    config = model.config
    reserved = bool(config.reserve_lattice_site)
    convention = (
        "`reserve_lattice_site: true` (this project's default): the last of the `n_max` sites may only be padding, "
        "so every sampled crystal keeps a row to read its lattice from. For crystals with `n_max - 1` or more sites "
        "the log-likelihood lacks the reference's log p(stop) term; all other crystals get the reference's value. "
        "For the reference's likelihood exactly, load with "
        "`CrystalFormerForCrystalGeneration.from_pretrained(folder, reserve_lattice_site=False)`."
        if reserved
        else "`reserve_lattice_site: false`: the reference's convention exactly (a crystal filling all `n_max` "
        "sites reads its lattice from the last site's row, as JAX clamps the index)."
    )
    return f"""
# CrystalFormer, converted from `{Path(str(source)).name}`

Converted with `crystalformer-rl convert` from the official CrystalFormer (JAX/Haiku) checkpoint `{source}`.
The parameters are the reference's, renamed; the conversion is checked to 1e-8 in float64 against the reference's
log-likelihoods (`tests/test_convert_checkpoint.py`).

| | |
|---|---|
| parameters | {model.num_parameters():,} |
| layers / heads × head size / hidden size | {config.num_hidden_layers} / {config.num_attention_heads} × {config.head_dim} / {config.hidden_size} |
| position embedding | {config.position_embedding_type} |
| n_max (sites) | {config.n_max} |

## Likelihood convention

{convention}
"""
