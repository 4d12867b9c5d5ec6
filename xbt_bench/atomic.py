"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A file is written to a temporary name beside its target and renamed onto it; it gets the
permissions a plain ``open()`` would give it (0666 less the umask), not ``mkstemp``'s 0600. A
disk that cannot take the write (full, read-only, not ours) is one :class:`StorageError` line
naming the file and the bytes needed, and the temporary file is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import XbtError, storage_error


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The name of an atomic write's temporary file (see :func:`atomic_path`).
_TEMPORARY = re.compile(r"\..+\.tmp")
# Read once at import (changing the umask is process-wide, so not done while threads write).
FILE_MODE = 0o666 & ~_umask()


def make_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` created with its parents if missing; StorageError naming it when the disk
    refuses (read-only, not permitted, full)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(folder, error) or error from None
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike[str], size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success give it the umask's permissions and
    move it onto ``path``. The temporary file never outlives the block; a disk that cannot take
    the write raises StorageError naming ``path`` and ``size`` (the bytes to write, when known;
    else the bytes written when the disk refused)."""
    target = Path(path)
    make_folder(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise storage_error(target, error, size) or error from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except OSError as error:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        problem = storage_error(
            target, error, size if size is not None else written, at_least=size is None
        )
        if problem is None:
            raise
        raise problem from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_with(
    path: str | os.PathLike[str], write: Callable[[Path], Any], size: int | None = None
) -> None:
    """Call ``write(tmp_path)`` and atomically move the result onto ``path`` (``size``: the
    bytes it writes, when known, for the message of a full disk)."""
    with atomic_path(path, size) as tmp:
        write(tmp)


def _write_bytes(path: str | os.PathLike[str], data: bytes, checked: bool) -> None:
    (write_checked if checked else write_with)(path, lambda tmp: tmp.write_bytes(data), len(data))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    _write_bytes(path, text.encode("utf-8"), checked=False)


def write_json(path: str | os.PathLike[str], obj: Any, checked: bool = False) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``, with its SHA-256 beside it when
    ``checked`` (see :func:`is_intact`)."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    _write_bytes(path, text.encode("utf-8"), checked)


def write_npy(path: str | os.PathLike[str], array: np.ndarray, checked: bool = False) -> None:
    """Atomically write ``array`` as a ``.npy`` file (memory-mappable with ``np.load``), with
    its SHA-256 beside it when ``checked`` (see :func:`is_intact`)."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    # The .npy header is at most a few hundred bytes.
    (write_checked if checked else write_with)(path, save, array.nbytes + 512)


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


def write_checked(
    path: str | os.PathLike[str], write: Callable[[Path], Any], size: int | None = None
) -> None:
    """:func:`write_with`, then record the file's SHA-256 beside it (see :func:`is_intact`)."""
    write_with(path, write, size)
    write_text(checksum_path(path), sha256_of(path) + "\n")


def is_intact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists and matches the SHA-256 recorded when it was written (a file
    without a record, or with another hash, is not intact)."""
    try:
        recorded = checksum_path(path).read_text().strip()
        return recorded == sha256_of(path)
    except OSError:
        return False


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _replacements(target: Path, kind: str) -> list[tuple[Path, int]]:
    """The ``.NAME.KIND-PID-HEX`` folders beside ``target`` with the PID that made each."""
    found = []
    for path in target.parent.glob(f".{target.name}.{kind}-*"):
        pid = path.name.rsplit(f".{kind}-", 1)[1].split("-")[0]
        if pid.isdigit():
            found.append((path, int(pid)))
    return found


def _clean_replacements(target: Path) -> None:
    """Undo what an interrupted :func:`replaced_folder` of ``target`` left: its staging folders
    go, and an old folder set aside whose replacement never arrived is put back."""
    for staged, pid in _replacements(target, "staged"):
        if not _pid_running(pid):
            shutil.rmtree(staged, ignore_errors=True)
    for aside, pid in _replacements(target, "aside"):
        if not _pid_running(pid):
            if target.exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(aside, target)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


@contextmanager
def replaced_folder(path: str | os.PathLike[str], owned: Callable[[str], bool]) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` to fill; when the block ends without error it
    replaces ``path`` as a whole (old folder set aside, new one renamed in, old one removed), so
    a reader finds the old set of files or the new one, never a mix. Entries of the old folder
    that ``owned(name)`` does not claim (a user's own files) are kept, hard-linked into the new
    folder first; temporary files of interrupted writes are not. What an interrupted
    replacement left behind is cleaned up first, and the staging folder never outlives the
    block. A ``path`` that holds the current folder is refused (XbtError)."""
    target = Path(path).absolute()
    if Path.cwd().resolve().is_relative_to(target.resolve()):
        raise XbtError(
            f"{path} holds the current folder, which cannot be replaced as a whole; give a "
            "folder of its own (e.g. leaderboards)"
        )
    make_folder(target.parent)
    _clean_replacements(target)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staged = target.parent / f".{target.name}.staged-{tag}"
    make_folder(staged)
    try:
        yield staged
        if not target.is_dir():
            os.rename(staged, target)
            return
        for entry in target.iterdir():
            keep = not owned(entry.name) and not _TEMPORARY.fullmatch(entry.name)
            if keep and not (staged / entry.name).exists():
                if entry.is_dir():
                    shutil.copytree(entry, staged / entry.name, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(entry), str(staged / entry.name))
        aside = target.parent / f".{target.name}.aside-{tag}"
        os.rename(target, aside)
        os.rename(staged, target)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def leftovers(root: str | os.PathLike[str], min_age_s: float) -> list[Path]:
    """Files under ``root`` that no reader uses: temporary files of interrupted atomic writes
    (``.NAME.*.tmp``) and files set aside as damaged (``*.corrupt-*``), at least ``min_age_s``
    old."""
    now = time.time()
    root = Path(root)
    candidates = [*root.rglob(".*.tmp"), *root.rglob("*.corrupt-*")] if root.is_dir() else []
    return sorted(p for p in candidates if p.is_file() and now - p.stat().st_mtime >= min_age_s)
