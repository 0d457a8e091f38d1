"""The daemon's source of truth on disk: an atomically replaced, fsync'd JSON file.

Every process record is written *before* the process is reported started, so
a daemon killed at any instant finds, on restart, every process it may have
left running (DESIGN §2). The file is replaced with write-to-temp, fsync,
rename, fsync-of-directory: a reader sees the old or the new state, never a
torn one, even across a power cut. Owner-only permissions: it names hosts,
pids and commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

__all__ = ["StateFile", "atomic_write"]


def atomic_write(path: str, data: bytes, mode: int = 0o600, *, dir_mode: int = 0o700) -> None:
    """Replace ``path`` with ``data`` atomically and durably (``mode`` from the start; missing
    parent directories are made with ``dir_mode``)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateFile:
    """``<state_dir>/state.json``: cluster, launch id and one record per process."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "state.json")

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (a corrupt file raises ValueError).

        Also removes the temp files of writes that a crash interrupted (only the daemon that
        holds the state directory's lock loads, so none of them is being written).
        """
        directory = os.path.dirname(self.path)
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a state file")
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Write ``data`` atomically (see module docstring)."""
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def probe(self, size: int) -> None:
        """Write, sync and remove a scratch file of ``size`` bytes next to the state file: raises
        OSError (ENOSPC, EROFS, EACCES …) when a save of that size would fail now."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-", dir=directory)
        try:
            # Real bytes, not a sparse ftruncate: tmpfs and most file systems only refuse at write.
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def remove(self) -> None:
        """Forget the state (after a clean ``down``)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
