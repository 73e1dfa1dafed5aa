"""Which torch device a model runs on: one rule for every reward and energy model.

Scoring is the largest share of an RL step, so under ``accelerate launch`` each rank scores its own samples on its
own GPU instead of all ranks sharing the host's cores. ``"auto"`` (the default everywhere) picks the rank's CUDA
device when CUDA is available, else the CPU.
"""

from __future__ import annotations

import os

import torch

from .errors import UsageError


__all__ = ["DeviceError", "rank_cuda_index", "resolve_device"]

_HELP = "use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"


class DeviceError(UsageError):
    """A device that cannot be used here (a bad name, or CUDA where there is none); a ``ValueError`` the command
    line prints as one line."""


def rank_cuda_index() -> int:
    """This process's CUDA device: ``LOCAL_RANK`` (set by ``accelerate launch``/``torchrun``, the index the trainer
    uses) when set, else torch's current device.

    ``LOCAL_RANK`` is taken modulo the visible devices, so a launcher that gives each process a single GPU through
    ``CUDA_VISIBLE_DEVICES`` (rank 3 sees one device) still lands on ``cuda:0`` instead of failing.
    """
    local_rank = os.environ.get("LOCAL_RANK", "").strip()
    if not local_rank:
        return torch.cuda.current_device()
    try:
        rank = int(local_rank)
    except ValueError:
        raise DeviceError(f"LOCAL_RANK={local_rank!r} is not a non-negative integer") from None
    if rank < 0:
        raise DeviceError(f"LOCAL_RANK={local_rank!r} is not a non-negative integer")
    return rank % max(torch.cuda.device_count(), 1)


def resolve_device(device: str | int | torch.device | None = "auto") -> torch.device:
    """The device a model should live on.

    ``"auto"``/``None``: the rank's CUDA device (:func:`rank_cuda_index`) when CUDA is available, else the CPU.
    ``"cuda"`` without an index also means the rank's device (under DDP a bare ``"cuda"`` would put every rank on
    GPU 0). ``"cpu"``, ``"cuda:1"``, an integer GPU index and a ``torch.device`` are taken as they are.

    Raises:
        DeviceError: a name torch does not know, a device type other than CPU/CUDA, CUDA where there is none, or a
            GPU index beyond the visible devices.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda", rank_cuda_index()) if torch.cuda.is_available() else torch.device("cpu")
    name = device
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise DeviceError(f"device must be a string, a GPU index or a torch.device, not {type(device).__name__}")
    if isinstance(device, int):
        if device < 0:
            raise DeviceError(f"device {device}: a GPU index cannot be negative; {_HELP}")
        device = torch.device("cuda", device)
    elif isinstance(device, str):
        try:
            device = torch.device(device.strip().lower())
        except (RuntimeError, ValueError):
            raise DeviceError(f"device {name!r} is not a torch device; {_HELP}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceError(f"device {str(name)!r}: only CPU and CUDA devices are supported; {_HELP}")
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"device {str(name)!r} requested but CUDA is not available ({build}); use 'cpu' or 'auto'")
    index = rank_cuda_index() if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {str(name)!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)
