"""Atomic writes and provenance records: every output appears complete or not at all.

Each file is written to a temporary ``.<name>.<pid>.<random>.tmp`` beside its destination and
renamed onto it only when the write succeeded, so an interrupted run never leaves a half-written
file that looks complete; the provenance record (version, stage, time, config hash) goes into the
metadata of every Parquet output (:mod:`cytoscreen.io.tables`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cytoscreen import __version__

logger = logging.getLogger(__name__)


# --- provenance ---------------------------------------------------------------------------------
def config_hash(config: Mapping[str, Any] | None) -> str | None:
    """Short SHA-256 of a config mapping (sorted JSON), or None."""
    if config is None:
        return None
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(stage: str, **extra: Any) -> dict[str, Any]:
    """Provenance record stored in every output's metadata."""
    record: dict[str, Any] = {
        "cytoscreen_version": __version__,
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


# --- atomic writes ------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is ``.<name>.<pid>.<random>.tmp``. A process killed mid-write (SIGKILL, a
    node lost) cannot remove its own, so every call first removes the leftovers of earlier writers
    of the same ``path`` whose process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files 0600; give the output the permissions a plain open() would
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.*.tmp`` beside ``path`` unless the pid in its name is a running process."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        token = tmp.name[len(prefix):].split(".", 1)[0]
        if token.isdigit() and _pid_alive(int(token)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            logger.info("removed %s, left by an interrupted write of %s", tmp, path.name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (indented, NaN written as null)."""
    return write_text(json.dumps(json_safe(obj), indent=2, default=str) + "\n", path)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as None, numpy scalars as Python ones, keys as strings."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
