"""Shipped toy weights are used only as shipped: the first time a process loads a version
(path, size, mtime) of ``model_zoo/models/NAME.safetensors``, its SHA-256 is compared with the
``weights_sha256`` its card recorded when it was shipped. A file changed since (edited, damaged,
tampered with) is refused in one line instead of giving other numbers without a word."""

from __future__ import annotations

from pathlib import Path

from ..atomic import sha256_of
from ..errors import XbtError
from .toy_models import ZooEntry

# File versions (resolved path, size, mtime) this process has verified.
_verified: set[tuple[str, int, int]] = set()


def verified_weights(entry: ZooEntry) -> Path:
    """The weights ``zoo:NAME`` loads (:attr:`ZooEntry.weights_path`); shipped weights are
    first checked against their card's SHA-256 (once per file version in this process),
    XbtError naming the file and ``xbt-bench zoo build`` when they differ. A build in the cache
    has no recorded hash and is returned as it is."""
    path = entry.weights_path
    if path != entry.shipped_weights:
        return path
    stat = path.stat()
    version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if version in _verified:
        return path
    card = entry.shipped_card() or {}
    if sha256_of(path) != card.get("weights_sha256"):
        raise XbtError(
            f"shipped weights {path} do not match the weights_sha256 of their card "
            f"{entry.shipped_card_path} (the file changed after it was shipped); restore it from "
            f"the package, or rebuild and ship it with `xbt-bench zoo build {entry.name} --ship`"
        )
    _verified.add(version)
    return path
