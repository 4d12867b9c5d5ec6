"""The dataset registry: a name maps to a loader ``(split, root) -> ImageTextSet``.

Loaders are registered lazily (``"module:attr"``) so listing datasets imports nothing heavy.
Data references in pair files are ``NAME:SPLIT``; a text corpus may also be a path to a
text file with one caption per line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, NotFoundError
from ..registry import Registry
from .base import ImageTextSet, TextCorpus

DatasetLoader = Callable[[str, "Path | None"], ImageTextSet]

datasets: Registry[DatasetLoader] = Registry("dataset", hint="xbt-bench datasets list")
datasets.register("toy-shapes", "xbt_bench.data.toy:load_toy_dataset")


def split_data_ref(ref: str) -> tuple[str, str]:
    """``"NAME:SPLIT"`` -> ``(NAME, SPLIT)``; ConfigError if there is no split."""
    name, sep, split = ref.rpartition(":")
    if not sep or not name or not split:
        raise ConfigError(
            f"data reference {ref!r} needs a split: use NAME:SPLIT, e.g. toy-shapes:test"
        )
    return name, split


def load_dataset(name: str, split: str, root: Path | None = None) -> ImageTextSet:
    """The ``split`` of dataset ``name`` (found under ``root`` for datasets on disk)."""
    return datasets.get(name)(split, root)


def load_text_corpus(ref: str, root: Path | None = None) -> TextCorpus:
    """A deduplicated caption corpus: a text file (one caption a line) or ``NAME:SPLIT``."""
    path = Path(ref).expanduser()
    if path.suffix in (".txt", ".text") or path.is_file():
        if not path.is_file():
            raise NotFoundError(f"text corpus file {path} does not exist")
        lines = path.read_text(encoding="utf-8").splitlines()
        return TextCorpus.from_texts(path.name, lines, source=f"file {path} ({len(lines)} lines)")
    name, split = split_data_ref(ref)
    data = load_dataset(name, split, root)
    return TextCorpus.from_texts(
        f"{name}:{split}", data.captions, source=f"captions of {data.key} ({len(data.captions)})"
    )
