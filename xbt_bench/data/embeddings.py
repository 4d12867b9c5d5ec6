"""Embeddings a team already has, as a pair's input: one model's embeddings of one split on disk.

A *split folder* holds one model's embeddings of one split (docs/embeddings-format.md)::

    manifest.json            what the folder holds, with the SHA-256 of every file (written last)
    image.npy | image.parquet    image vectors [images, dim], float16 or float32
    text.npy  | text.parquet     caption vectors [captions, dim], float16 or float32
    caption_image.npy        caption -> image index [captions], integers (.npy layout)
    image_ids.npy, caption_ids.npy   optional string ids (.npy layout)

In the Parquet layout the vectors are a column ``embedding`` (a fixed-size list of floats), the
text table has the caption -> image index as a column ``image``, and ids are a column ``id``. A
text-only split (the text corpus the maps are fitted on) has ``images = 0`` and no image file.
A *model folder* holds one model's split folders (``DIR/old/test``, ``DIR/old/support``, ...):
``embeddings:DIR/old`` names it as a model (:mod:`xbt_bench.models.stored`) and as a dataset
whose splits come from its manifests (:func:`load_embeddings_dataset`).

Reading is verified (:func:`read_split`): every file's shape, dtype and row count against the
manifest, its checksum, finite values and, where the manifest says ``normalized``, unit rows; a
bad file is named in one line. ``.npy`` vectors are memory-mapped (large galleries are never
loaded whole); Parquet tables are read into memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import sha256_of, write_json, write_npy, write_with
from ..errors import ConfigError, InputError, NotFoundError, validation_message
from .base import ImageTextSet, TextCorpus, fingerprint_of

MANIFEST = "manifest.json"
FORMAT = "xbt-bench embeddings"
VERSION = 1
VECTOR_DTYPES = ("float16", "float32")
# How far from 1 a stored row's norm may be when the manifest says normalized.
UNIT_NORM_TOLERANCE = {"float32": 1e-4, "float16": 4e-3}
# Rows read at once when checking values (memory-mapped files are read block by block).
CHECK_BLOCK = 1 << 16
FileFormat = Literal["npy", "parquet"]


class FileEntry(BaseModel):
    """One file of a split folder: its name and SHA-256."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SideTiming(BaseModel):
    """How long the model took to embed one side of the split (the cost estimate's input)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(gt=0)
    device: str = "unrecorded device"


class EmbeddingsManifest(BaseModel):
    """``manifest.json`` of a split folder (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["xbt-bench embeddings"] = FORMAT
    version: Literal[1] = VERSION
    model: str = Field(min_length=1, description="the model's name or reference")
    fingerprint: str = Field(
        min_length=1,
        description="identity of the model's weights (e.g. NAME@sha256-prefix): embeddings of "
        "models with other fingerprints never mix",
    )
    split: str = Field(min_length=1)
    dim: int = Field(gt=0)
    normalized: bool = Field(description="every row has unit L2 norm")
    images: int = Field(ge=0, description="image rows; 0 for a text-only split (a text corpus)")
    captions: int = Field(gt=0, description="caption rows")
    data_fingerprint: str | None = Field(
        None,
        description="what was embedded, the same for every model's embeddings of the split; "
        "derived from the caption -> image index and ids when absent",
    )
    files: dict[Literal["image", "text", "caption_image", "image_ids", "caption_ids"], FileEntry]
    timing: dict[Literal["image", "text"], SideTiming] = Field(default_factory=dict)


class RowLabels(Sequence[str]):
    """``prefix#0``, ``prefix#1``, ...: names of rows without ids, made when asked for (a
    gallery of 100M captions needs no list of 100M strings)."""

    def __init__(self, prefix: str, n: int) -> None:
        self.prefix, self.n = prefix, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int | slice) -> str | list[str]:  # type: ignore[override]
        if isinstance(index, slice):
            return [f"{self.prefix}#{i}" for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(index)
        return f"{self.prefix}#{index % self.n}"


@dataclass(frozen=True)
class StoredSplit:
    """One verified split folder: its manifest and arrays (``.npy`` vectors memory-mapped)."""

    folder: Path
    manifest: EmbeddingsManifest
    image: np.ndarray | None  # [images, dim]; None for a text-only split or without vectors
    text: np.ndarray | None  # [captions, dim]; None when read without vectors
    caption_image: np.ndarray | None  # [captions] int64; None for a text-only split
    image_ids: np.ndarray | None
    caption_ids: np.ndarray | None

    @property
    def data_fingerprint(self) -> str:
        """What was embedded: the manifest's ``data_fingerprint``, else a hash of the split's
        name, counts, caption -> image index and ids (equal for every model's embeddings of
        the same rows)."""
        if self.manifest.data_fingerprint:
            return self.manifest.data_fingerprint
        return index_fingerprint(
            self.manifest.split, self.caption_image, self.image_ids, self.caption_ids,
            self.manifest.captions,
        )  # fmt: skip

    def vectors(self, side: str) -> np.ndarray:
        """The image or caption vectors; NotFoundError for images of a text-only split."""
        if side == "text":
            return self.text
        if self.image is None:
            raise NotFoundError(
                f"{self.folder} is a text-only split (images = 0): it has no image vectors"
            )
        return self.image


def index_fingerprint(
    split: str,
    caption_image: np.ndarray | None,
    image_ids: np.ndarray | None,
    caption_ids: np.ndarray | None,
    captions: int,
) -> str:
    """A hash of a split's rows as the index describes them (name, counts, caption -> image
    index, ids), for splits whose manifest gives no ``data_fingerprint``."""
    digest = hashlib.sha256()
    for part in (caption_image, image_ids, caption_ids):
        if part is not None:
            digest.update(np.ascontiguousarray(part).tobytes())
        digest.update(b"\x00")
    return fingerprint_of(["embeddings", split, captions, digest.hexdigest()])


def _read_manifest(folder: Path) -> EmbeddingsManifest:
    path = folder / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(
            f"{path} does not exist; a split folder needs a {MANIFEST} (docs/embeddings-format.md)"
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); write the manifest again") from None
    try:
        return EmbeddingsManifest.model_validate(raw)
    except ValidationError as error:
        where, message, _ = validation_message(error)
        raise ConfigError(f"{path}: field '{where}': {message}") from None


def _check_layout(folder: Path, manifest: EmbeddingsManifest) -> None:
    """ConfigError unless the manifest lists the files its kind of split needs."""
    files = manifest.files
    parquet = files.get("text") is not None and files["text"].path.endswith(".parquet")
    needed = {"text"} | ({"image"} if manifest.images else set())
    if manifest.images and not parquet:
        needed.add("caption_image")
    allowed = needed | ({"image_ids", "caption_ids"} if not parquet else set())
    if not manifest.images:
        allowed -= {"image_ids"}
    missing, extra = sorted(needed - set(files)), sorted(set(files) - allowed)
    if missing or extra:
        kind = "a text-only split" if not manifest.images else "an image-text split"
        problems = [f"it lacks {missing}"] * bool(missing) + [f"remove {extra}"] * bool(extra)
        raise ConfigError(
            f"{folder / MANIFEST}: {kind} in the {'Parquet' if parquet else '.npy'} layout "
            f"needs files {sorted(needed)}; {'; '.join(problems)}"
        )


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist (listed in {path.parent / MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise InputError(
            f"{path} cannot be read as a .npy array ({_first_line(error)}); is it truncated? "
            "write it again"
        ) from None


def _load_parquet(path: Path) -> dict[str, np.ndarray]:
    """The columns of a Parquet vector table: ``embedding`` as [rows, dim], the others 1-D."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, memory_map=True)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist (listed in {path.parent / MANIFEST})") from None
    except (OSError, pa.ArrowException) as error:
        raise InputError(
            f"{path} cannot be read as Parquet ({_first_line(error)}); is it truncated?"
        ) from None
    if "embedding" not in table.column_names:
        raise InputError(f"{path} has no column 'embedding' (columns: {table.column_names})")
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_fixed_size_list(column.type):
        raise InputError(f"{path}: column 'embedding' must hold lists of floats, not {column.type}")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(column) and (lengths != lengths[0]).any():
        raise InputError(f"{path}: column 'embedding' has rows of different lengths")
    dim = int(lengths[0]) if len(column) else 0
    values = column.flatten().to_numpy(zero_copy_only=False)
    out = {"embedding": values.reshape(len(column), dim)}
    for name in table.column_names:
        if name != "embedding":
            out[name] = table.column(name).to_numpy()
    return out


def _check_vectors(path: Path, array: np.ndarray, rows: int, manifest: EmbeddingsManifest) -> None:
    """InputError naming ``path`` unless ``array`` is [rows, dim] float16/float32, as the
    manifest says."""
    where = path.parent / MANIFEST
    if array.ndim != 2:
        raise InputError(f"{path} has shape {array.shape}; vectors must be [rows, dim]")
    if str(array.dtype) not in VECTOR_DTYPES:
        raise InputError(f"{path} holds {array.dtype} values; store float16 or float32 vectors")
    if len(array) != rows:
        side = "images" if path.stem == "image" else "captions"
        raise InputError(
            f"{path} has {len(array)} rows but its manifest ({where}) says {rows} {side}; "
            "write the manifest again or restore the file"
        )
    if array.shape[1] != manifest.dim:
        raise InputError(
            f"{path} has dimension {array.shape[1]} but its manifest ({where}) says {manifest.dim}"
        )


def _check_values(path: Path, array: np.ndarray, normalized: bool) -> None:
    """InputError naming ``path`` and the first bad rows when a value is NaN or inf, or a row's
    norm is not 1 although the manifest says ``normalized``."""
    tolerance = UNIT_NORM_TOLERANCE[str(array.dtype)]
    for start, block in _blocks(array):
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            rows = (bad[:5] + start).tolist()
            raise InputError(
                f"{path} has NaN or inf values in rows {rows}"
                f"{' and more' if bad.size > 5 else ''}; embed those items again or drop them"
            )
        norms = np.linalg.norm(block, axis=1)
        off = np.flatnonzero(np.abs(norms - 1) > tolerance if normalized else norms == 0)
        if off.size:
            what = "norms other than 1" if normalized else "all-zero vectors"
            fix = (
                "set normalized to false in the manifest (rows are then normalised on read) or "
                "store unit rows"
                if normalized
                else "drop those rows"
            )
            raise InputError(f"{path} has {what} in rows {(off[:5] + start).tolist()}; {fix}")


def _check_index(path: Path, caption_image: np.ndarray, manifest: EmbeddingsManifest) -> np.ndarray:
    """The caption -> image index as int64; InputError naming ``path`` if malformed."""
    if caption_image.ndim != 1 or len(caption_image) != manifest.captions:
        raise InputError(
            f"{path}: the caption -> image index has shape {caption_image.shape}, but the "
            f"manifest says {manifest.captions} captions"
        )
    if not np.issubdtype(caption_image.dtype, np.integer):
        raise InputError(
            f"{path}: the caption -> image index must be integers, not {caption_image.dtype}"
        )
    if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= manifest.images):
        raise InputError(
            f"{path}: the caption -> image index refers to images outside 0..{manifest.images - 1}"
        )
    return np.asarray(caption_image, dtype=np.int64)


def _check_ids(path: Path, ids: np.ndarray | None, rows: int) -> np.ndarray | None:
    """String ids as a ``str`` array (None when there are none); InputError naming ``path``."""
    if ids is None:
        return None
    if ids.ndim != 1 or len(ids) != rows:
        raise InputError(f"{path}: ids have shape {ids.shape}, expected ({rows},)")
    if ids.dtype.kind != "U" and not all(isinstance(i, str) for i in ids):
        raise InputError(f"{path}: ids must be strings, not {ids.dtype}")
    return ids.astype(str)


def read_split(folder: str | Path, vectors: bool = True) -> StoredSplit:
    """The split folder ``folder``, verified (module docstring): one-line errors naming the bad
    file. With ``vectors`` False only the manifest, the caption -> image index and the ids are
    read and checked (the dataset side: a gallery's vectors are read once, by the model side),
    and ``image`` and ``text`` are left out unless a Parquet table holds them with the index."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    _check_layout(folder, manifest)
    files = {role: folder / entry.path for role, entry in manifest.files.items()}
    arrays: dict[str, np.ndarray | None] = {}
    # Where each array was read from (Parquet tables carry the index and the ids as columns).
    source: dict[str, Path] = dict(files)
    read = []
    for side, rows in (("image", manifest.images), ("text", manifest.captions)):
        path = files.get(side)
        ids = "image_ids" if side == "image" else "caption_ids"
        if path is not None and path.suffix == ".parquet":
            table = _load_parquet(path)
            arrays[side], arrays[ids] = table["embedding"], table.get("id")
            source[ids] = path
            if side == "text" and manifest.images:
                if "image" not in table:
                    raise InputError(f"{path} has no column 'image' (the caption -> image index)")
                arrays["caption_image"], source["caption_image"] = table["image"], path
        elif path is not None and vectors:
            arrays[side] = _load_npy(path, mmap=True)
        else:
            continue
        _check_vectors(path, arrays[side], rows, manifest)
        read.append(side)
    for role in ("caption_image", "image_ids", "caption_ids"):
        if role in files:
            arrays[role] = _load_npy(files[role], mmap=False)
            read.append(role)
    for role in read:
        if sha256_of(files[role]) != manifest.files[role].sha256:
            raise InputError(
                f"{files[role]} does not match the SHA-256 in its manifest ({folder / MANIFEST}); "
                "the file changed after the manifest was written: restore it or write the "
                "manifest again"
            )
    caption_image = None
    if manifest.images:
        caption_image = _check_index(source["caption_image"], arrays["caption_image"], manifest)
    image_ids = _check_ids(
        source.get("image_ids", folder), arrays.get("image_ids"), manifest.images
    )
    caption_ids = _check_ids(
        source.get("caption_ids", folder), arrays.get("caption_ids"), manifest.captions
    )
    image, text = arrays.get("image"), arrays.get("text")
    if vectors:
        for side, array in (("image", image), ("text", text)):
            if array is not None:
                _check_values(files[side], array, manifest.normalized)
        if not manifest.normalized:  # served as unit rows (in memory, not memory-mapped)
            image = None if image is None else _unit_rows(image)
            text = _unit_rows(text)
    return StoredSplit(folder, manifest, image, text, caption_image, image_ids, caption_ids)


def _unit_rows(array: np.ndarray) -> np.ndarray:
    x = np.asarray(array, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def split_folders(model_folder: str | Path) -> dict[str, Path]:
    """The split folders of a model folder (subfolders with a manifest), by split name;
    NotFoundError when there are none."""
    folder = Path(model_folder).expanduser()
    if not folder.is_dir():
        raise NotFoundError(
            f"embeddings folder {folder} does not exist; give a folder of split folders, as "
            "`xbt-bench embeddings dump` writes them"
        )
    found = {p.name: p for p in sorted(folder.iterdir()) if (p / MANIFEST).is_file()}
    if not found:
        raise NotFoundError(
            f"{folder} holds no split folders (subfolders with a {MANIFEST}); see "
            "docs/embeddings-format.md"
        )
    return found


def split_manifests(model_folder: str | Path) -> dict[str, EmbeddingsManifest]:
    """The manifests of a model folder's splits, by split name (files not read)."""
    return {name: _read_manifest(path) for name, path in split_folders(model_folder).items()}


def _split_folder(model_folder: str | Path, split: str) -> Path:
    folders = split_folders(model_folder)
    if split not in folders:
        from ..errors import did_you_mean

        raise NotFoundError(
            f"embeddings folder {model_folder} has no split {split!r}; "
            f"{did_you_mean(split, folders, 'its splits')}"
        )
    return folders[split]


def _no_images(key: str) -> Callable[[int], Image.Image]:
    """An image loader for a set that has embeddings, not images: it always fails."""

    def load(index: int) -> Image.Image:
        raise NotFoundError(
            f"{key} holds embeddings, not images: methods that run a model on images are "
            "skipped on an embeddings pair"
        )

    return load


def describe_split(model_folder: str | Path, split: str) -> dict[str, str]:
    """What ``datasets check`` shows about a stored split, after verifying every file of it
    (vectors included): its folder, model, dimension, storage and layout."""
    stored = read_split(_split_folder(model_folder, split))
    manifest = stored.manifest
    text = manifest.files["text"].path
    return {
        "folder": str(stored.folder),
        "model": f"{manifest.model} ({manifest.fingerprint})",
        "vectors": f"dim {manifest.dim}, {np.asarray(stored.text[:1]).dtype}, "
        f"{'unit rows' if manifest.normalized else 'normalised on read'}",
        "layout": "Parquet" if text.endswith(".parquet") else ".npy (memory-mapped)",
    }


def load_embeddings_dataset(
    model_folder: str | Path, split: str, root: Path | str | None = None
) -> ImageTextSet:
    """The split ``split`` of a model folder as an image-text set: its counts, caption -> image
    index and fingerprint (``captions`` are the caption ids, or ``split#j``; there are no
    images to load). ``root`` is unused (the folder is a path)."""
    stored = read_split(_split_folder(model_folder, split), vectors=False)
    manifest = stored.manifest
    name = f"embeddings:{model_folder}"
    if not manifest.images:
        raise ConfigError(
            f"{stored.folder} is a text-only split (images = 0); use it as the pair's text "
            f'corpus (data.text = "{name}:{split}"), not as an image-text split'
        )
    captions = (
        stored.caption_ids
        if stored.caption_ids is not None
        else RowLabels(split, manifest.captions)
    )
    return ImageTextSet(
        name=name,
        split=split,
        n_images=manifest.images,
        load_image=_no_images(f"{name}:{split}"),
        captions=captions,
        caption_image=stored.caption_image,
        fingerprint=stored.data_fingerprint,
    )


def load_embeddings_corpus(model_folder: str | Path, split: str) -> TextCorpus:
    """The split ``split`` of a model folder as a text corpus: one text per caption row, in row
    order (the caption ids, or ``split#j``), never deduplicated (rows are vectors)."""
    stored = read_split(_split_folder(model_folder, split), vectors=False)
    count = stored.manifest.captions
    texts = stored.caption_ids if stored.caption_ids is not None else RowLabels(split, count)
    return TextCorpus(
        name=f"embeddings:{model_folder}:{split}",
        texts=texts,
        source=f"caption vectors of {stored.folder} ({count})",
        fingerprint=stored.data_fingerprint,
    )


def write_split(
    folder: str | Path,
    *,
    model: str,
    fingerprint: str,
    split: str,
    text: np.ndarray,
    image: np.ndarray | None = None,
    caption_image: np.ndarray | None = None,
    image_ids: Sequence[str] | None = None,
    caption_ids: Sequence[str] | None = None,
    data_fingerprint: str | None = None,
    timing: dict[str, SideTiming] | None = None,
    file_format: FileFormat = "npy",
    dtype: str = "float32",
) -> Path:
    """Write one model's embeddings of one split into ``folder`` (module docstring): the
    vectors as ``dtype``, each file atomically, the manifest (with every file's SHA-256, and
    ``normalized`` when every row has unit norm) last. Without ``image`` it is a text-only split.
    Returns the manifest's path; the result reads back with :func:`read_split`."""
    folder = Path(folder)
    if dtype not in VECTOR_DTYPES:
        raise ConfigError(f"embeddings dtype {dtype!r} is not one of {', '.join(VECTOR_DTYPES)}")
    if file_format not in ("npy", "parquet"):
        raise ConfigError(f"embeddings format {file_format!r} is not one of npy, parquet")
    if (image is None) != (caption_image is None):
        raise InputError(
            "an image-text split needs both image vectors and the caption -> image index"
        )
    vectors = {"image": image, "text": text}
    stored = {
        side: np.ascontiguousarray(v, dtype=dtype) for side, v in vectors.items() if v is not None
    }
    dims = {v.shape[1] for v in stored.values()}
    if len(dims) != 1:
        raise InputError(
            f"{folder}: image and caption vectors have different dimensions {sorted(dims)}"
        )
    ids = {"image": image_ids, "text": caption_ids}
    files: dict[str, Path] = {}
    if file_format == "npy":
        for side, array in stored.items():
            files[side] = folder / f"{side}.npy"
            write_npy(files[side], array)
        if caption_image is not None:
            files["caption_image"] = folder / "caption_image.npy"
            write_npy(files["caption_image"], np.asarray(caption_image, dtype=np.int64))
        for side, role in (("image", "image_ids"), ("text", "caption_ids")):
            if ids[side] is not None:
                files[role] = folder / f"{role}.npy"
                write_npy(files[role], np.asarray(ids[side], dtype=str))
    else:
        for side, array in stored.items():
            columns = (
                {"image": caption_image} if side == "text" and caption_image is not None else {}
            )
            files[side] = folder / f"{side}.parquet"
            _write_parquet(files[side], array, ids[side], columns)
    manifest = EmbeddingsManifest(
        model=model,
        fingerprint=fingerprint,
        split=split,
        dim=dims.pop(),
        normalized=all(_unit(array) for array in stored.values()),
        images=0 if image is None else len(stored["image"]),
        captions=len(stored["text"]),
        data_fingerprint=data_fingerprint,
        files={
            role: FileEntry(path=path.name, sha256=sha256_of(path)) for role, path in files.items()
        },
        timing=timing or {},
    )
    path = folder / MANIFEST
    write_json(path, manifest.model_dump(mode="json", exclude_none=True))
    return path


def _unit(array: np.ndarray) -> bool:
    tolerance = UNIT_NORM_TOLERANCE[str(array.dtype)]
    return all(
        bool(np.all(np.abs(np.linalg.norm(block, axis=1) - 1) <= tolerance))
        for _, block in _blocks(array)
    )


def _blocks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, rows)`` blocks of ``array`` as float32 (a memory-mapped file is read one
    block at a time)."""
    for start in range(0, len(array), CHECK_BLOCK):
        yield start, np.asarray(array[start : start + CHECK_BLOCK], dtype=np.float32)


def _write_parquet(
    path: Path, vectors: np.ndarray, ids: Sequence[str] | None, columns: dict[str, np.ndarray]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = {
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), vectors.shape[1]
        )
    }
    table |= {
        name: pa.array(np.asarray(values, dtype=np.int64)) for name, values in columns.items()
    }
    if ids is not None:
        table["id"] = pa.array([str(i) for i in ids])
    write_with(path, lambda tmp: pq.write_table(pa.table(table), tmp))
