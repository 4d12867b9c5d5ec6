"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_with(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, checked: bool = False) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``, with its SHA-256 beside it when
    ``checked`` (see :func:`is_intact`)."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    (write_checked if checked else write_with)(
        path, lambda tmp: tmp.write_text(text, encoding="utf-8")
    )


def write_npy(path: str | os.PathLike[str], array: np.ndarray, checked: bool = False) -> None:
    """Atomically write ``array`` as a ``.npy`` file (memory-mappable with ``np.load``), with
    its SHA-256 beside it when ``checked`` (see :func:`is_intact`)."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    (write_checked if checked else write_with)(path, save)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: str | os.PathLike[str]) -> Path:
    """Where the checksum of ``path`` is kept: ``path`` + ``.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checked(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """:func:`write_with`, then record the file's SHA-256 beside it (see :func:`is_intact`)."""
    write_with(path, write)
    write_text(checksum_path(path), sha256_of(path) + "\n")


def is_intact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists and matches the SHA-256 recorded when it was written (a file
    without a record, or with another hash, is not intact)."""
    try:
        recorded = checksum_path(path).read_text().strip()
        return recorded == sha256_of(path)
    except OSError:
        return False


def leftovers(root: str | os.PathLike[str], min_age_s: float) -> list[Path]:
    """Files under ``root`` that no reader uses: temporary files of interrupted atomic writes
    (``.NAME.*.tmp``) and files set aside as damaged (``*.corrupt-*``), at least ``min_age_s``
    old."""
    now = time.time()
    root = Path(root)
    candidates = [*root.rglob(".*.tmp"), *root.rglob("*.corrupt-*")] if root.is_dir() else []
    return sorted(p for p in candidates if p.is_file() and now - p.stat().st_mtime >= min_age_s)
