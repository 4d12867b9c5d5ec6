"""The data types every dataset, corpus and method in xbt-bench speaks.

An :class:`ImageTextSet` is an image–caption retrieval set (a split of the toy world, a
Flickr30k Karpathy split, a webdataset, a folder). A :class:`TextCorpus` is captions
without images (the text-only stage of XBT). Both carry a ``fingerprint``: a stable hash of
their content that keys the embedding cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..console import warn

# De-duplicating a corpus that drops more than this share of its texts says so.
DEDUP_WARN_SHARE = 0.05


def fingerprint_of(parts: Iterable[object]) -> str:
    """A short stable hash of ``parts`` (their ``repr``s), for cache keys."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ImageTextSet:
    """Images (loaded by index) and captions, each caption describing one image.

    ``caption_image[j]`` is the index of the image that caption ``j`` describes; an image
    may have several captions (Flickr30k and the toy world have 5).
    """

    name: str
    split: str
    n_images: int
    load_image: Callable[[int], Image.Image] = field(repr=False, compare=False)
    captions: Sequence[str] = field(repr=False)
    caption_image: np.ndarray = field(repr=False)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        caption_image = np.asarray(self.caption_image, dtype=np.int64)
        object.__setattr__(self, "caption_image", caption_image)
        if self.n_images <= 0:
            raise ValueError(f"dataset {self.name}/{self.split} has no images")
        if len(self.captions) == 0:
            raise ValueError(f"dataset {self.name}/{self.split} has no captions")
        if caption_image.shape != (len(self.captions),):
            raise ValueError(
                f"dataset {self.name}/{self.split}: caption_image has shape "
                f"{caption_image.shape}, expected ({len(self.captions)},)"
            )
        if caption_image.min() < 0 or caption_image.max() >= self.n_images:
            raise ValueError(
                f"dataset {self.name}/{self.split}: caption_image refers to images outside "
                f"0..{self.n_images - 1}"
            )
        if not self.fingerprint:
            object.__setattr__(
                self,
                "fingerprint",
                fingerprint_of([self.name, self.split, self.n_images, *self.captions]),
            )

    @property
    def key(self) -> str:
        """``name/split``: how results and logs name this set."""
        return f"{self.name}/{self.split}"

    def subset(self, n_images: int) -> ImageTextSet:
        """The first ``n_images`` images and their captions (for quick runs and sweeps)."""
        if n_images >= self.n_images:
            return self
        keep = np.flatnonzero(self.caption_image < n_images)
        return ImageTextSet(
            name=self.name,
            split=f"{self.split}[:{n_images}]",
            n_images=n_images,
            load_image=self.load_image,
            captions=[self.captions[j] for j in keep],
            caption_image=self.caption_image[keep],
            fingerprint=fingerprint_of([self.fingerprint, n_images]),
        )


@dataclass(frozen=True)
class TextCorpus:
    """Captions without images, deduplicated, with where they came from."""

    name: str
    texts: Sequence[str] = field(repr=False)
    source: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) == 0:
            raise ValueError(
                f"text corpus {self.name!r} is empty; give a file with one caption per line "
                "or a dataset split that has captions"
            )
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint_of([self.name, *self.texts]))

    @classmethod
    def from_texts(cls, name: str, texts: Iterable[str], source: str = "") -> TextCorpus:
        """A corpus of the unique, non-empty, stripped ``texts`` in first-seen order; one line
        of warning when de-duplication drops more than :data:`DEDUP_WARN_SHARE` of them."""
        given = [t.strip() for t in texts if t and t.strip()]
        unique = list(dict.fromkeys(given))
        dropped = len(given) - len(unique)
        if given and dropped > DEDUP_WARN_SHARE * len(given):
            warn(
                f"warning: text corpus {name!r}: {dropped} of its {len(given)} texts "
                f"({100 * dropped / len(given):.0f}%) repeat another and were dropped; the "
                f"methods fit on the {len(unique)} unique ones"
            )
        return cls(name=name, texts=unique, source=source)

    def head(self, n: int) -> TextCorpus:
        """The first ``n`` texts (for quick runs); the corpus itself when it has no more."""
        if n >= len(self.texts):
            return self
        return TextCorpus(
            name=f"{self.name}[:{n}]",
            texts=list(self.texts[:n]),
            source=f"{self.source}, first {n}",
            fingerprint=fingerprint_of([self.fingerprint, n]),
        )


def not_utf8(path: Path, error: UnicodeDecodeError) -> str:
    """A one-line message naming the line of ``path`` that is not UTF-8, and the fix."""
    line = path.read_bytes()[: error.start].count(b"\n") + 1
    return (
        f"{path} line {line} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
        f"{error.start}); save the file as UTF-8"
    )
