"""How a run executes: the device, chosen once at each entry point, and how the network runs on it.

:func:`choose_device` turns the user's ``--device`` (or the ``device`` argument of the Python API) into a
``torch.device`` once; everything of the run (prior, operator, noise draws, generators, measurements)
is then put on that device. The default is the first CUDA device when PyTorch sees one, else the CPU;
under ``torchrun`` each process takes the GPU of its local rank. :class:`Execution` records the choice
with the network's precision, block checkpointing, ``torch.compile`` and the CPU thread count, and
applies them around a reconstruction (:meth:`Execution.running`).
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

from .diffusion.denoiser import PRECISIONS
from .errors import DPSError

__all__ = ["Execution", "choose_device", "device_name", "PRECISIONS"]

DeviceLike = Union[str, torch.device, None]


def _local_rank() -> Optional[int]:
    """This process's local rank under torchrun (more than one process), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def choose_device(device: DeviceLike = None) -> torch.device:
    """The device of a run: ``device`` checked, or the default (CUDA when present, else the CPU).

    ``"cuda"`` means this process's GPU: ``cuda:LOCAL_RANK`` under torchrun, ``cuda:0`` otherwise. A device
    this machine does not have, or a string that is not a device, is a :class:`~dps.errors.DPSError` that says
    what to pass instead.
    """
    rank = _local_rank()
    if device is None or str(device) == "":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise DPSError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
            raise DPSError(f"--device {text}: this machine has no CUDA device ({build}); use --device cpu, or "
                           "install a CUDA build of PyTorch on a machine with a GPU")
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", rank if rank is not None else 0)
        elif rank is not None:
            raise DPSError(f"--device {text}: under torchrun every process takes the GPU of its local rank; "
                           "pass --device cuda")
        if dev.index >= count:
            raise DPSError(f"--device {dev}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DPSError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise DPSError(f"--device {text}: use cpu, cuda, cuda:N or mps")
    return dev


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name and CUDA version, or the CPU's model, cores and torch threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type != "cpu":
        return str(device)
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


@dataclass(frozen=True)
class Execution:
    """Where and how a run's network executes (no effect on the algorithm, only on speed, memory and
    floating-point rounding).

    :param device: the device of everything in the run (:func:`choose_device` picks and checks it).
    :param precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the network's forward and its VJP under
        ``torch.autocast`` in that dtype; the iterate, Tweedie, the data fit and the step size stay in float32.
    :param checkpointing: recompute the network's blocks in the backward pass (less memory, more time).
    :param compile: run the network through ``torch.compile`` (needs a C++ compiler on the CPU).
    :param threads: intra-op CPU threads of the process (None: torch's default).
    """

    device: str = "cpu"
    precision: str = "fp32"
    checkpointing: bool = False
    compile: bool = False
    threads: Optional[int] = None

    #: the settings that change results (by rounding) and so are part of a run's record when not default
    NETWORK_DEFAULTS = {"precision": "fp32", "checkpointing": False, "compile": False}

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DPSError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        object.__setattr__(self, "device", str(self.device))

    @classmethod
    def on(cls, device: DeviceLike = None, **settings) -> "Execution":
        """An Execution on ``device`` as :func:`choose_device` resolves it (the default: CUDA when present)."""
        return cls(device=str(choose_device(device)), **settings)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def network_settings(self) -> dict:
        """precision, checkpointing and compile where they are not the defaults (for run records)."""
        return {k: getattr(self, k) for k, v in self.NETWORK_DEFAULTS.items() if getattr(self, k) != v}

    def record(self) -> dict:
        """What a run folder records: the device, its name (for a CPU its model, cores and torch threads), and the
        network settings that are not the defaults."""
        return {"device": self.device, "device_name": device_name(self.torch_device), **self.network_settings()}

    def running(self, prior):
        """The context in which ``prior`` runs its network with these settings (a prior without a network
        accepts only the defaults)."""
        return prior.running(self.precision, self.checkpointing, self.compile)

    def to_dict(self) -> dict:
        return asdict(self)
