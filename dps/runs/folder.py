"""The run folder every command writes into (:class:`RunFolder`): the settings are recorded before any
work, a rerun with other settings is refused, a second process is refused while the first holds the
folder's lock, and stale temporary files of an interrupted run are removed. Which items are finished is
the business of the batch loop (:mod:`dps.runs.loop`) and the folder's layout (:mod:`dps.runs.layout`).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DPSError, RunFolderBusy
from ..utils import atomic_write

__all__ = ["RunFolder", "write_json", "read_json"]

LOCK = ".lock"


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2)))


def read_json(path: Path, what: str = "record") -> dict:
    """A JSON object from ``path``, or a DPSError that names the damaged file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DPSError(f"the {what} {path} is damaged ({exc.__class__.__name__}); delete it to recompute") from None
    if not isinstance(data, dict):
        raise DPSError(f"the {what} {path} is not a JSON object; delete it to recompute")
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    """A run folder held by one process: ``with RunFolder(out, "run.json", settings) as run: ...``.

    :param record_name: the JSON file whose ``"settings"`` key identifies the run.
    :param settings: plain values (JSON) that must match on a rerun (a mismatch is refused).
    :param initial: extra keys written with the settings when the run is new.
    :param extendable: keys whose values a rerun may extend: a recorded list must be a prefix of the new one (a
        bench run grown from 8 to 32 images keeps its first 8 results, whose seeds depend on the image's index
        only), a recorded mapping must be part of the new one (a bench run may add tasks); the record then holds
        the larger value. Shrinking is refused like any change.
    """

    def __init__(self, path: Path, record_name: str, settings: dict, initial: Optional[dict] = None,
                 extendable: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.record_path = self.path / record_name
        self.settings = json.loads(json.dumps(settings))  # plain JSON values, as they will be read back
        self.initial = initial or {}
        self.extendable = tuple(extendable)
        self.record: dict = {}
        self.created = False  # True when this run wrote the record (the folder held no run before)
        self._lock: Optional[Path] = None
        self._discard: list[Path] = []

    # -- lock ---------------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DPSError(f"cannot create the output folder {self.path}: {exc.strerror}; choose another --out") \
                from None
        if not os.access(self.path, os.W_OK):
            raise DPSError(f"the output folder {self.path} is not writable; choose another --out")
        lock = self.path / LOCK
        me = f"{socket.gethostname()} {os.getpid()}"
        for _attempt in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock.read_text().split() if lock.exists() else []
                if len(holder) == 2 and holder[0] == socket.gethostname() and holder[1].isdigit() \
                        and not _pid_alive(int(holder[1])):
                    lock.unlink(missing_ok=True)  # left by a process that no longer runs
                    continue
                raise RunFolderBusy(f"{self.path} is in use by another dps process ({' '.join(holder) or 'unknown'}"
                                    f"); wait for it, or delete {lock} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._lock = lock
            return
        raise RunFolderBusy(f"could not take the lock {lock}")

    def _clean_stale(self) -> None:
        """Remove temporary files (``.NAME.*.tmp``) that an interrupted run left behind."""
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # -- record -------------------------------------------------------------------------------------------
    def _open_record(self) -> None:
        if self.record_path.exists():
            try:
                record = json.loads(self.record_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DPSError(f"{self.record_path} is damaged; delete the folder {self.path} or use another --out") \
                    from None
            old = record.get("settings") or {}
            diff = sorted(k for k in set(self.settings) | set(old) if old.get(k) != self.settings.get(k))
            fixed = [k for k in diff if k not in self.extendable or not self._extends(old.get(k), self.settings.get(k))]
            if fixed:
                grown = [f"; {k}: the folder holds {len(old[k])}, this run names {len(self.settings[k])} (a rerun may "
                         f"add to them, in the same order)" for k in fixed if k in self.extendable
                         and isinstance(old.get(k), list) and isinstance(self.settings.get(k), list)]
                grown += [f"; {k}: {self._entry_changes(old[k], self.settings[k])} (a rerun may add entries, not remove "
                          "or change them)" for k in fixed if k in self.extendable
                          and isinstance(old.get(k), dict) and isinstance(self.settings.get(k), dict)]
                raise DPSError(f"{self.path} holds a run with other settings (changed: {', '.join(fixed)}{''.join(grown)}"
                               "); use another --out, or the same settings to resume")
            self.record = record
            if diff:  # extended: the record names the longer lists from now on
                self.record["settings"] = self.settings
                self.save()
        else:
            self.record = {"settings": self.settings, **self.initial}
            self.created = True
            self.save()  # the settings are recorded before any work

    @staticmethod
    def _entry_changes(old: dict, new: dict) -> str:
        """Which entries of a recorded mapping a rerun removes or changes, e.g. "x removed, y changed"."""
        removed = sorted(c for c in old if c not in new)
        changed = sorted(c for c in old if c in new and old[c] != new[c])
        return ", ".join(part for part in (f"{', '.join(removed)} removed" if removed else "",
                                           f"{', '.join(changed)} changed" if changed else "") if part)

    @staticmethod
    def _extends(old, new) -> bool:
        """True when the list ``new`` starts with the whole list ``old`` (same items at the same places), or the
        mapping ``new`` holds every entry of ``old`` unchanged (and perhaps more)."""
        if isinstance(old, dict) and isinstance(new, dict):
            return all(k in new and new[k] == v for k, v in old.items())
        return isinstance(old, list) and isinstance(new, list) and len(new) >= len(old) and new[:len(old)] == old

    def save(self) -> None:
        write_json(self.record_path, self.record)

    def __enter__(self) -> "RunFolder":
        self._acquire()
        try:
            self._clean_stale()
            self._open_record()
        except BaseException:
            self._release()
            raise
        return self

    def discard(self, files: Sequence[Path] = ()) -> None:
        """Undo a new run that failed before finishing any result: its record and ``files`` (what it wrote, no
        result among them) are removed when the lock is released, and so are the folders left empty, so that
        the corrected command (other settings) starts afresh. A no-op for a folder that held a run before."""
        if self.created:
            self._discard = [self.record_path, *map(Path, files)]

    def _release(self) -> None:
        if self._lock is not None:
            for path in self._discard:
                path.unlink(missing_ok=True)
            self._lock.unlink(missing_ok=True)
            self._lock = None
            folders = {q for p in self._discard for q in p.parents if q == self.path or self.path in q.parents}
            for folder in sorted(folders, key=lambda p: -len(p.parts)):  # deepest first, up to the run folder
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def __exit__(self, *exc) -> None:
        self._release()
