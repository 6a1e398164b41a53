"""Small shared helpers: atomic file writes."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

__all__ = ["atomic_path", "atomic_write", "save_torch"]


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one ``os.replace``.

    A crash or an exception leaves any existing ``path`` untouched and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except Exception as exc:
        # a writer that reports a full disk in its own words (torch.save: "unexpected pos", an iostream error)
        if not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) and (
                _disk_full(path.parent) or _says_disk_full(exc)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _says_disk_full(exc: BaseException) -> bool:
    """Whether a writer's own exception reports ENOSPC in words (safetensors: "... (os error 28)")."""
    text = str(exc)
    return f"os error {errno.ENOSPC}" in text or os.strerror(errno.ENOSPC) in text


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of ``folder`` has less than ``margin`` bytes free."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> None:
    """``write(tmp_path)`` then move it onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def save_torch(obj, path: Union[str, Path]) -> None:
    """``torch.save(obj)`` to ``path`` atomically, with the same bytes for the same tensors (saved through a
    file object, so the archive does not carry the temporary file's name): a result file's digest then
    changes only when its values do."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
