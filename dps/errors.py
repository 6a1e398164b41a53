"""The errors a user can cause, and the one place that turns other libraries' exceptions into them.

Every error a user can fix (a bad file, a bad value, a method that does not apply) is a :class:`DPSError`
whose message is one line that names the file, key or value and says how to fix it. The command line
prints ``Error: <message>`` and exits with status 1 (``--debug`` or ``DPS_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Optional

__all__ = ["DPSError", "NotApplicable", "CapabilityMissing", "Diverged", "RunFolderBusy", "check_int", "check_float",
           "user_message"]


class DPSError(ValueError):
    """An error in the user's input or settings; its message is the one line the user sees."""


class NotApplicable(DPSError):
    """A method does not apply to an (operator, noise) pair; the message says why."""


class CapabilityMissing(NotApplicable):
    """An operator lacks a capability a method needs (an SVD, a pseudo-inverse, a Fourier support)."""


class Diverged(DPSError, FloatingPointError):
    """An iterative solver's iterate left every range the prior and the measurement allow."""


class RunFolderBusy(DPSError):
    """Another process holds the run folder."""


def check_int(value: Any, key: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi], or a DPSError naming ``key`` (booleans and 20.5 are refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        if isinstance(value, Real) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        else:
            raise DPSError(f"{key} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DPSError(f"{key} must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}], "
                       f"got {value}")
    return value


def check_float(value: Any, key: str, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False) -> float:
    """``value`` as a finite float in the range, or a DPSError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DPSError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise DPSError(f"{key} must be finite, got {value}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise DPSError(f"{key} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise DPSError(f"{key} must be <= {hi}, got {value}")
    return value


def user_message(exc: Exception) -> tuple[str, int]:
    """The one line a command prints for ``exc``, and its exit status: ours as they are (1); a missing optional
    package, a permission or disk error named (1); anything else an internal error that asks for a report (3)."""
    from .io import describe_exception

    if isinstance(exc, DPSError):
        return str(exc), 1
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or str(exc)
        extra = {"diffusers": "pip install 'dps[diffusers]'", "transformers": "pip install 'dps[diffusers]'",
                 "torchmetrics": "pip install 'dps[metrics]'", "lpips": "pip install 'dps[metrics]'",
                 "torchvision": "pip install 'dps[metrics]'"}.get((name or "").split(".")[0], f"pip install {name}")
        return f"the optional package {name!r} is needed for this and is not installed: {extra}", 1
    if isinstance(exc, PermissionError):
        return f"permission denied: {_where(exc.filename) or exc}; choose a folder you can write to", 1
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        if exc.errno == errno.ENOSPC:
            return (f"no space left on the device (writing in {_where(exc.filename) or 'the output folder'}); free some "
                    "space and rerun the same command: finished results are kept and the run resumes"), 1
        return f"{exc.strerror}: {exc.filename or ''}".rstrip(": "), 1
    if isinstance(exc, (ValueError, FileNotFoundError)):  # older checks: their message is meant for users
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        return (" ".join(lines) if lines else describe_exception(exc)), 1
    return f"internal error ({describe_exception(exc)}); rerun with `dps --debug ...` and report the traceback", 3


def _where(filename) -> str:
    """The file an OS error names, or for one of our temporary files (``.NAME.xxxx.tmp``) the folder it was in."""
    if not filename:
        return ""
    import os

    name = os.path.basename(str(filename))
    return os.path.dirname(str(filename)) or "." if name.startswith(".") and name.endswith(".tmp") else str(filename)
