"""A model known only by its embeddings: ``embeddings:DIR``, a folder of one model's split
folders (:mod:`xbt_bench.data.embeddings`, docs/embeddings-format.md).

It stands where a loaded model stands (:func:`~xbt_bench.models.loading.load_model` returns it
for an ``embeddings:`` reference): it has an ``identity`` (its manifests' model fingerprint)
and an ``embed_dim``, and the extraction layer serves its verified arrays
(:func:`~xbt_bench.embed.extract.embed_split`) instead of running a network, so every method,
the runner's galleries and the diagnostics read them through the one path they read any
model's embeddings. Every split is verified when the folder is opened (a bad file is named in
one line before anything is scored). It has no network: asking for one (``model``,
``preprocess``, ``tokenizer``, ...) is a one-line error; methods that run a network declare it
(``register_method(needs_models=True)``) and are skipped on a pair of stored embeddings.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ..data.embeddings import MANIFEST, StoredSplit, read_split, split_folders
from ..errors import InputError, NotFoundError, XbtError
from .refs import parse_model_ref


class NoNetworkError(XbtError, AttributeError):
    """A network's attribute asked of a model known only by its embeddings (an AttributeError
    too, so ``hasattr`` and ``getattr(..., default)`` work)."""


class StoredModel:
    """The embeddings in a model folder, standing for the model that computed them."""

    def __init__(self, ref: str, folder: Path, splits: dict[str, StoredSplit]) -> None:
        self.ref = ref
        self.folder = folder
        self.splits = splits
        first = next(iter(splits.values())).manifest
        self.name = first.model
        self.identity = first.fingerprint
        self.embed_dim = first.dim
        self._by_data = {split.data_fingerprint: split for split in splits.values()}

    @classmethod
    def open(cls, ref: str) -> StoredModel:
        """Open and verify every split of the model folder ``ref`` names (``embeddings:DIR``):
        one-line errors naming a bad file, or a split whose model or dimension differs from the
        others'."""
        folder = Path(parse_model_ref(ref).source).expanduser()
        folders = split_folders(folder)
        console = Console(stderr=True)
        splits = {}
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"verify {ref}", total=len(folders))
            for name, path in folders.items():
                splits[name] = read_split(path)
                progress.advance(task)
        first_name, first = next(iter(splits.items()))
        for split in splits.values():
            manifest = split.manifest
            if manifest.fingerprint != first.manifest.fingerprint:
                raise InputError(
                    f"{split.folder / MANIFEST}: model fingerprint {manifest.fingerprint!r}, but "
                    f"split {first_name!r} of {folder} was embedded by "
                    f"{first.manifest.fingerprint!r}; a model folder holds one model's embeddings"
                )
            if manifest.dim != first.manifest.dim:
                raise InputError(
                    f"{split.folder / MANIFEST}: dimension {manifest.dim}, but split "
                    f"{first_name!r} of {folder} has {first.manifest.dim}; every split of a "
                    "model has the model's dimension"
                )
        return cls(ref, folder, splits)

    def split_of(self, data_fingerprint: str, what: str) -> StoredSplit:
        """The verified split holding the embeddings of the data ``data_fingerprint`` (``what``
        names it in errors); NotFoundError when this folder holds none."""
        split = self._by_data.get(data_fingerprint)
        if split is None:
            raise NotFoundError(
                f"{self.ref} holds no embeddings of {what} (its splits: "
                f"{', '.join(self.splits)}); a pair of stored embeddings is scored on its own "
                "splits only"
            )
        return split

    def __getattr__(self, name: str) -> object:
        # Only attributes this object lacks get here: those of a network.
        if name.startswith("__"):
            raise AttributeError(name)
        raise NoNetworkError(
            f"{self.ref} holds embeddings, not a model: it has no {name!r}; methods that run a "
            "model's network are skipped on a pair of stored embeddings "
            "(register_method(needs_models=True))"
        )

    def __repr__(self) -> str:
        return f"StoredModel({self.ref!r}, identity={self.identity!r}, dim={self.embed_dim})"
