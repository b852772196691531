"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file lives in the same directory so that ``os.replace`` is an atomic rename on
    the same file system; it is fsynced first, so a crash (or a full disk, which makes ``write``
    raise) leaves any previous ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed mid-write (SIGKILL runs no cleanup) leaves its temporary file: the next write
    # of the same file removes it, so a resumed run ends with none.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without error, it
    replaces ``path`` in one rename. On error nothing of it is left, and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        # mkdtemp makes 0700, and some writers (safetensors) make 0600 files: outputs get the usual
        # permissions, as a plain mkdir and open would give them.
        mask = _umask()
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class FolderBusyError(ValueError):
    """Another process holds the folder's lock: two runs writing one folder would corrupt it."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it, locked with flock) for the
    block; a second holder is refused at once, naming the first one's pid. The kernel releases the
    lock when its process dies, so a killed run never leaves the folder locked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise FolderBusyError(f"{folder} is in use by another {what} (pid {holder}); wait for it to finish, "
                                  "or choose another output folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield folder
    finally:
        fh.close()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON, atomically: NaN and infinities become null."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write one strict JSON object per line (a table of models), atomically."""
    text = "".join(json.dumps(strict_json(r), sort_keys=True, allow_nan=False) + "\n" for r in rows)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def strict_json(obj: Any) -> Any:
    """``obj`` with numpy / torch values as Python ones and non-finite floats as None (JSON's null:
    bare NaN is not JSON, and strict readers such as jq or JavaScript reject it)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return strict_json(obj.tolist())
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def load_state(path: Path, keys: tuple[str, ...], device="cpu") -> dict:
    """A resume state written by torch.save, refused clearly if it is not one (truncated, foreign,
    or of another version of the code)."""
    import torch  # here, so that the CLI's file helpers load without it

    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch.load raises pickle's, zipfile's or its own errors for garbage
        raise ValueError(f"{path} is not a readable resume state ({type(err).__name__}: {err}); remove it to "
                         "start the run afresh") from err
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a resume state of this run (it lacks {', '.join(missing)}); remove it "
                         "to start the run afresh")
    return state
