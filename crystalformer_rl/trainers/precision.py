"""Precision and host-memory options shared by the trainers' configurations: their documented defaults (the help
strings are the CLI docs) and the rule that dataloader pinning is only on when training runs on CUDA."""

from __future__ import annotations


BF16_HELP = (
    "bf16 autocast (mixed precision) of the forward and backward passes; parameters and optimizer states stay "
    "float32. Default False: float32 throughout. Needs a GPU with bf16 support (Ampere or newer) or the CPU."
)
TF32_HELP = (
    "TF32 matrix products on Ampere and newer GPUs (float32 storage, 10-bit mantissa products; relative error "
    "~1e-3, several times faster). Default None: leave PyTorch's setting (TF32 matmuls off, full float32); "
    "True / False switch it on / off for the whole process."
)
PIN_MEMORY_HELP = (
    "Pin the dataloader's host memory for faster host-to-GPU copies. Default True, which takes effect only when "
    "training runs on CUDA: pinning is switched off on the CPU, where it buys nothing."
)


def pin_memory_only_on_cuda(args) -> None:
    """Turn ``dataloader_pin_memory`` off unless ``args`` (a ``TrainingArguments``) trains on a CUDA device.

    ``TrainingArguments`` only does this for ``use_cpu=True``; on a machine without a GPU the default would pin
    anyway (torch then warns on every dataloader). Call after ``TrainingArguments.__post_init__``.
    """
    if args.dataloader_pin_memory and args.device.type != "cuda":
        args.dataloader_pin_memory = False
