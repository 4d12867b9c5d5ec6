"""``wds/<name>`` retrieval webdatasets in CLIP_benchmark's layout, read from a local folder.

Layout (what ``clip_benchmark_export_wds --retrieval`` writes), in ``--data-root`` itself or
in its sub-folder ``<name>``, ``wds_<name>`` or ``wds-<name>``::

    dataset_type.txt      "retrieval" (may be absent; any other type is refused)
    {split}/nshards.txt   the number of shards N
    {split}/0.tar ... {split}/{N-1}.tar

Each sample is the tar members sharing a key (``s0000000.webp``, ``s0000000.txt``): one image
(the first of ``webp``, ``png``, ``jpg``, ``jpeg``, as CLIP_benchmark picks) and a ``txt``
with one caption per line (``str.splitlines``). Samples keep their order across shards.

Shards are indexed once on load (tar headers and captions only); images are read lazily by
seeking to their bytes, so a shard is never extracted. Only local, uncompressed tars are read.
The fingerprint covers each shard's bytes (hashed once per shard version, see
:func:`xbt_bench.fingerprints.file_hashes`).
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track

from ..errors import ConfigError, NotFoundError, XbtError
from ..fingerprints import file_hashes
from .base import ImageTextSet
from .folder import content_fingerprint, locate

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
EXPORT_HINT = (
    "write it with `clip_benchmark_export_wds --retrieval` or "
    "clip_benchmark.webdataset_builder.convert_retrieval_dataset"
)
# webdataset's own rules for member names: skipped metadata, and key + extension.
_META = re.compile(r"__[^/]*__($|/)")
_KEY_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class WdsImages:
    """Loads image ``i`` of a webdataset from its shard by byte offset, as PIL RGB (picklable)."""

    def __init__(
        self, data_dir: Path, shards: list[Path], shard: np.ndarray, offset: np.ndarray,
        size: np.ndarray,
    ) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.shard, self.offset, self.size = shard, offset, size

    def __call__(self, index: int) -> Image.Image:
        with open(self.shards[self.shard[index]], "rb") as handle:
            handle.seek(int(self.offset[index]))
            data = handle.read(int(self.size[index]))
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    def describe(self) -> dict[str, str]:
        """Where the set was read from, for ``xbt-bench datasets check``."""
        return {
            "webdataset": str(self.data_dir),
            "shards": f"{len(self.shards)} ({self.shards[0].name} .. {self.shards[-1].name})",
        }


@dataclass
class _Sample:
    key: str
    images: dict[str, tuple[int, int]] = field(default_factory=dict)  # ext -> (offset, size)
    text: bytes | None = None


def _index_shard(path: Path) -> list[_Sample]:
    samples: list[_Sample] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                name = member.name
                if not member.isreg() or ("/" not in name and name.startswith("__")
                                          and name.endswith("__")) or _META.match(name):
                    continue
                match = _KEY_EXTENSION.match(name)
                if match is None:
                    continue
                key, extension = match.group(1), match.group(2).lower()
                if not samples or samples[-1].key != key:
                    samples.append(_Sample(key))
                sample = samples[-1]
                if extension == "txt":
                    sample.text = tar.extractfile(member).read()
                elif extension in IMAGE_EXTENSIONS:
                    sample.images[extension] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as error:
        raise XbtError(f"cannot read shard {path} as an uncompressed tar: {error}") from None
    return samples


def _shards(data_dir: Path, split: str) -> list[Path]:
    nshards_file = data_dir / split / "nshards.txt"
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError:
        raise ConfigError(f"{nshards_file} must hold the number of shards") from None
    if nshards < 1:
        raise XbtError(f"{nshards_file} says {nshards} shards; the split is empty")
    shards = [data_dir / split / f"{i}.tar" for i in range(nshards)]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise NotFoundError(
            f"{len(missing)} of {nshards} shards named by {nshards_file} are missing "
            f"(first: {data_dir / split / missing[0]})"
        )
    return shards


def load_wds_dataset(name: str, split: str, root: Path | str | None = None) -> ImageTextSet:
    """The ``split`` of retrieval webdataset ``wds/<name>`` (see the module docstring)."""
    dataset = f"wds/{name}"
    data_dir = locate(
        dataset, root, f"{split}/nshards.txt", [name, f"wds_{name}", f"wds-{name}"],
        f"a webdataset in CLIP_benchmark's layout needs {split}/nshards.txt and "
        f"{split}/0.tar..; {EXPORT_HINT}",
    )
    type_file = data_dir / "dataset_type.txt"
    if type_file.is_file():
        dataset_type = type_file.read_text().strip().lower()
        if dataset_type != "retrieval":
            raise ConfigError(
                f"{dataset} is a {dataset_type!r} webdataset ({type_file}), not a retrieval one "
                "(images with .txt captions)"
            )
    shards = _shards(data_dir, split)
    keys, extensions, shard, offset, size, captions, counts = [], [], [], [], [], [], []
    for shard_index, path in enumerate(
        track(shards, description=f"indexing {dataset}:{split}", transient=True,
              disable=len(shards) < 2)
    ):
        for sample in _index_shard(path):
            where = f"sample {sample.key!r} in {path}"
            extension = next((e for e in IMAGE_EXTENSIONS if e in sample.images), None)
            if extension is None:
                raise XbtError(f"{where} has no image ({', '.join(IMAGE_EXTENSIONS)})")
            if sample.text is None:
                raise XbtError(f"{where} has no .txt captions")
            try:
                sample_captions = sample.text.decode("utf-8").splitlines()
            except UnicodeDecodeError:
                raise XbtError(f"{where}: its .txt is not UTF-8") from None
            if not sample_captions:
                raise XbtError(f"{where} has an empty .txt (no captions)")
            keys.append(sample.key)
            extensions.append(extension)
            shard.append(shard_index)
            offset.append(sample.images[extension][0])
            size.append(sample.images[extension][1])
            captions.extend(sample_captions)
            counts.append(len(sample_captions))
    if not keys:
        raise XbtError(f"{dataset}:{split} in {data_dir} has no samples; {EXPORT_HINT}")
    caption_image = np.repeat(np.arange(len(keys)), counts)
    members = [f"{key}.{extension}" for key, extension in zip(keys, extensions, strict=True)]
    return ImageTextSet(
        name=dataset,
        split=split,
        n_images=len(keys),
        load_image=WdsImages(
            data_dir, shards, np.asarray(shard), np.asarray(offset), np.asarray(size)
        ),
        captions=captions,
        caption_image=caption_image,
        fingerprint=content_fingerprint(
            dataset, split, members, file_hashes(shards), captions, caption_image
        ),
    )
