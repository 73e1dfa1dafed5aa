"""``crystalformer-rl convert``: an official CrystalFormer checkpoint (JAX/haiku pickle) as a Hugging Face model
folder (the library behind it is :mod:`crystalformer_rl.modeling_crystalformer.convert_crystalformer_checkpoint`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..crystallography import DEFAULT_N_MAX
from ..modeling_crystalformer.convert_crystalformer_checkpoint import (
    OFFICIAL_CHECKPOINTS,
    _as_config_kwargs,
    load_crystalformer_checkpoint,
    write_converted_model_card,
)
from . import naming_input
from .parser import CommandArguments


@dataclass
class ConvertArguments(CommandArguments):
    """The options of ``crystalformer-rl convert``; ``checkpoint`` and ``output_dir`` can also be given first,
    positionally. Its ``--config`` is the checkpoint's JSON hyper-parameters, not a YAML file of options."""

    positionals = ("checkpoint", "output_dir")
    ranges = {"num_heads": (1, True), "key_size": (1, True), "Kx": (1, True), "n_max": (2, True)}

    checkpoint: str = field(
        metadata={
            "help": f"Official checkpoint: a local .pkl, an alias ({', '.join(OFFICIAL_CHECKPOINTS)}) or a Hub file "
            "'owner/repo/path.pkl'."
        }
    )
    output_dir: str = field(metadata={"help": "Where to write config.json + model.safetensors."})
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON with hyper-parameters (HF or reference make_transformer names).",
            "aliases": ["--config"],
        },
    )
    num_heads: int | None = field(default=None, metadata={"help": "Attention heads (not inferable from shapes)."})
    key_size: int | None = field(default=None, metadata={"help": "Per-head size (not inferable from shapes)."})
    Kx: int | None = field(default=None, metadata={"help": "Von Mises components (default 16)."})
    n_max: int | None = field(default=None, metadata={"help": f"Sites per crystal (default {DEFAULT_N_MAX})."})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "Parameter dtype."})
    cache_dir: str | None = field(default=None, metadata={"help": "Hugging Face cache directory for Hub downloads."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Also upload to this Hub repo.", "metavar": "REPO_ID"}
    )


def run_convert(args: ConvertArguments):
    with naming_input("--model_config", args.model_config):
        config = _as_config_kwargs(args.model_config)
    for key, value in (
        ("num_attention_heads", args.num_heads),
        ("head_dim", args.key_size),
        ("num_coord_components", args.Kx),
        ("n_max", args.n_max),
    ):
        if value is not None:
            config[key] = value
    hub_kwargs = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    with naming_input("checkpoint", args.checkpoint):  # a refused pickle, a truncated file, wrong shapes
        model = load_crystalformer_checkpoint(
            args.checkpoint, config=config or None, dtype=getattr(torch, args.dtype), **hub_kwargs
        )
    model.save_pretrained(args.output_dir)
    write_converted_model_card(model, str(args.checkpoint), args.output_dir)
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
    print(
        json.dumps(
            {
                "output_dir": str(args.output_dir),
                "parameters": model.num_parameters(),
                "num_hidden_layers": model.config.num_hidden_layers,
                "position_embedding_type": model.config.position_embedding_type,
            }
        )
    )
    return model
