"""``folder:PATH`` datasets: image files plus a CSV or JSONL of (image, caption) rows.

Layout: ``PATH`` is either an annotation file (``.csv`` or ``.jsonl``) or a folder holding
``{split}.csv`` or ``{split}.jsonl``. A relative ``PATH`` is taken under ``--data-root`` when
one is given. Image paths in the rows are relative to the annotation file's folder.

- CSV: a header naming an image column (``image``, ``filepath``, ``file_name`` or
  ``filename``) and a caption column (``caption``, ``title`` or ``text``); standard CSV
  quoting, so captions may hold commas.
- JSONL: one object a line with the same keys; a caption may also be a list of captions.

Several rows naming the same image give it several captions. Images are numbered in order of
first appearance and their captions grouped by image in row order (as CLIP_benchmark's Flickr
reader does).

Image paths must stay inside the folder they are relative to: an absolute path or one that
climbs out with ``..`` is refused, unless ``xbt-bench --allow-outside-root`` (the environment
variable ``XBT_BENCH_ALLOW_OUTSIDE_ROOT=1``) allows it.

This module also holds the pieces every on-disk dataset shares (CLIP_benchmark sets,
webdatasets): locating a dataset's files under ``--data-root``, a picklable lazy image loader,
and the content fingerprint. A fingerprint hashes the dataset name (no paths), the split, the
image file names relative to the root with the SHA-256 of their bytes
(:func:`xbt_bench.fingerprints.file_hashes`: read once, remembered by path, size and mtime),
the captions and which image each describes, so moving a dataset keeps its embedding cache
valid while editing its annotations or any image's content does not.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, NotFoundError, XbtError
from ..fingerprints import file_hashes
from .base import ImageTextSet, fingerprint_of, not_utf8

FINGERPRINT_VERSION = "image-text/2"
OUTSIDE_ROOT_ENV = "XBT_BENCH_ALLOW_OUTSIDE_ROOT"
IMAGE_COLUMNS = ("image", "filepath", "file_name", "filename")
CAPTION_COLUMNS = ("caption", "title", "text")
ANNOTATION_SUFFIXES = (".csv", ".jsonl")


class ImageFiles:
    """Loads image ``i`` of a dataset from ``base / names[i]`` as PIL RGB (picklable)."""

    def __init__(self, base: Path, names: Sequence[str], annotation: Path) -> None:
        self.base = base
        self.names = tuple(names)
        self.annotation = annotation

    def __call__(self, index: int) -> Image.Image:
        with Image.open(self.base / self.names[index]) as image:
            return image.convert("RGB")

    def describe(self) -> dict[str, str]:
        """Where the set was read from, for ``xbt-bench datasets check``."""
        return {
            "annotation": str(self.annotation),
            "image folder": str(self.base),
        }


def resolve_root(root: Path | str | None, dataset: str) -> Path:
    """``--data-root`` as a Path (``{dataset}`` and ``{dataset_cleaned}`` filled in, as in
    CLIP_benchmark); XbtError when it is not given or does not exist."""
    if root is None or str(root) == "":
        raise XbtError(
            f"dataset {dataset!r} is read from disk: pass --data-root PATH "
            f"(see `xbt-bench datasets list` for the files it needs)"
        )
    text = str(root).replace("{dataset}", dataset)
    text = text.replace("{dataset_cleaned}", dataset.replace("/", "-"))
    path = Path(text).expanduser()
    if not path.is_dir():
        raise NotFoundError(
            f"data root {path} for dataset {dataset!r} does not exist or is not a folder"
        )
    return path


def locate(
    dataset: str, root: Path | str | None, marker: str, folders: Iterable[str], get_it: str
) -> Path:
    """The folder holding ``marker``: the data root itself, else ``root/FOLDER`` for each of
    ``folders``; NotFoundError saying what is missing and where to get it otherwise."""
    base = resolve_root(root, dataset)
    candidates = [base, *(base / folder for folder in folders)]
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise NotFoundError(f"dataset {dataset!r}: {marker} not found in {tried}; {get_it}")


def check_not_empty(path: Path, get_it: str) -> None:
    """XbtError when the annotation file ``path`` is empty (0 bytes)."""
    if path.stat().st_size == 0:
        raise XbtError(f"annotation file {path} is empty; {get_it}")


def image_text_set(
    name: str,
    split: str,
    base: Path,
    annotation: Path,
    images: Sequence[tuple[str, Sequence[str]]],
    *,
    get_images: str,
    fingerprint_name: str | None = None,
) -> ImageTextSet:
    """An ImageTextSet of ``images`` (``(file name under base, captions)``, in order) after
    checking that there is at least one, that each has a caption and that every file exists."""
    if not images:
        raise XbtError(f"annotation file {annotation} lists no images for {name}:{split}")
    captionless = [file for file, captions in images if not captions]
    if captionless:
        raise XbtError(
            f"{len(captionless)} images in {annotation} have no caption "
            f"(first: {captionless[0]}); every image needs at least one"
        )
    names = [file for file, _ in images]
    check_inside(base, names, annotation)
    missing = [file for file in names if not (base / file).is_file()]
    if missing:
        raise NotFoundError(
            f"{len(missing)} of {len(names)} images listed in {annotation} are missing under "
            f"{base} (first: {missing[0]}); {get_images}"
        )
    captions = [caption for _, image_captions in images for caption in image_captions]
    caption_image = np.repeat(np.arange(len(images)), [len(c) for _, c in images])
    return ImageTextSet(
        name=name,
        split=split,
        n_images=len(names),
        load_image=ImageFiles(base, names, annotation),
        captions=captions,
        caption_image=caption_image,
        fingerprint=content_fingerprint(
            fingerprint_name or name,
            split,
            names,
            file_hashes([base / file for file in names]),
            captions,
            caption_image,
        ),
    )


def outside_root_allowed() -> bool:
    """Whether image paths may leave their dataset's folder (``--allow-outside-root``)."""
    return os.environ.get(OUTSIDE_ROOT_ENV, "") == "1"


def check_inside(base: Path, names: Sequence[str], annotation: Path) -> None:
    """ConfigError naming the first of ``names`` that is absolute or climbs out of ``base``
    with ``..`` (a row pointing at ``/etc/passwd``), unless :func:`outside_root_allowed`."""
    if outside_root_allowed():
        return
    outside = [
        name
        for name in names
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."
    ]
    if outside:
        raise ConfigError(
            f"{annotation} names {len(outside)} image(s) outside the dataset folder {base} "
            f"(first: {outside[0]!r}); give paths relative to that folder, or pass "
            "`xbt-bench --allow-outside-root ...` to read them anyway"
        )


def content_fingerprint(
    name: str,
    split: str,
    files: Sequence[str],
    contents: Sequence[str],
    captions: Sequence[str],
    caption_image: np.ndarray,
) -> str:
    """The cache key of an on-disk dataset (see the module docstring for what it covers):
    ``contents`` are hashes of the files' bytes (each image's, or each shard's)."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    return fingerprint_of(
        [FINGERPRINT_VERSION, name, split, len(files), *files, *contents, *captions,
         caption_image.tobytes()]
    )


def _folder_annotation(path: Path, split: str) -> Path:
    if path.is_file():
        if path.suffix.lower() not in ANNOTATION_SUFFIXES:
            raise ConfigError(
                f"folder dataset annotation {path} must be a .csv or .jsonl file of "
                "image,caption rows"
            )
        return path
    found = [path / f"{split}{suffix}" for suffix in ANNOTATION_SUFFIXES]
    found = [candidate for candidate in found if candidate.is_file()]
    if len(found) > 1:
        raise ConfigError(
            f"folder dataset {path} has both {split}.csv and {split}.jsonl; keep one, or name "
            f"the file itself: folder:{found[0]}"
        )
    if not found:
        present = sorted(p.name for p in path.iterdir() if p.suffix.lower() in ANNOTATION_SUFFIXES)
        raise NotFoundError(
            f"folder dataset {path} has no {split}.csv or {split}.jsonl (annotation files there: "
            f"{', '.join(present) or 'none'}); write one, or name the file: folder:{path}/FILE.csv"
        )
    return found[0]


def _pick_column(columns: Sequence[str], wanted: tuple[str, ...], annotation: Path) -> str:
    for column in wanted:
        if column in columns:
            return column
    raise ConfigError(
        f"{annotation} needs a header row with an image column ({'/'.join(IMAGE_COLUMNS)}) and "
        f"a caption column ({'/'.join(CAPTION_COLUMNS)}); "
        f"found columns: {', '.join(columns) or 'none'}"
    )


def _csv_rows(annotation: Path) -> list[tuple[int, str, list[str]]]:
    with annotation.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        image_column = _pick_column(columns, IMAGE_COLUMNS, annotation)
        caption_column = _pick_column(columns, CAPTION_COLUMNS, annotation)
        return [
            (reader.line_num, row[image_column] or "", [row[caption_column] or ""])
            for row in reader
        ]


def _jsonl_rows(annotation: Path) -> list[tuple[int, str, list[str]]]:
    rows = []
    with annotation.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{annotation} line {line_number} is not JSON: {error}") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{annotation} line {line_number} must be a JSON object")
            image_column = _pick_column(list(record), IMAGE_COLUMNS, annotation)
            caption_column = _pick_column(list(record), CAPTION_COLUMNS, annotation)
            captions = record[caption_column]
            captions = captions if isinstance(captions, list) else [captions]
            if not all(isinstance(c, str) for c in captions) or not isinstance(
                record[image_column], str
            ):
                raise ConfigError(
                    f"{annotation} line {line_number}: image and caption must be strings "
                    "(or a caption list of strings)"
                )
            rows.append((line_number, record[image_column], captions))
    return rows


def load_folder_dataset(path: str, split: str, root: Path | str | None = None) -> ImageTextSet:
    """``folder:PATH``'s ``split``: images and the captions its CSV or JSONL rows give them."""
    location = Path(path).expanduser()
    if not location.is_absolute() and root is not None and str(root):
        location = resolve_root(root, f"folder:{path}") / location
    if not location.exists():
        raise NotFoundError(
            f"folder dataset {location} does not exist; give a folder with {split}.csv or "
            f"{split}.jsonl, or a .csv/.jsonl file of image,caption rows"
        )
    annotation = _folder_annotation(location, split)
    check_not_empty(annotation, "write a header row image,caption and then one row per caption")
    try:
        is_csv = annotation.suffix.lower() == ".csv"
        rows = _csv_rows(annotation) if is_csv else _jsonl_rows(annotation)
    except UnicodeDecodeError as error:
        raise ConfigError(not_utf8(annotation, error)) from None
    except csv.Error as error:
        raise ConfigError(f"cannot read {annotation}: {error}") from None
    if not rows:
        raise XbtError(f"annotation file {annotation} has no image,caption rows (it is empty)")
    by_image: dict[str, list[str]] = {}
    for line_number, image, captions in rows:
        image, captions = image.strip(), [c.strip() for c in captions]
        if not image or not captions or not all(captions):
            raise ConfigError(f"{annotation} line {line_number}: empty image name or caption")
        by_image.setdefault(image, []).extend(captions)
    return image_text_set(
        f"folder:{path}",
        split,
        annotation.parent,
        annotation,
        list(by_image.items()),
        get_images="image paths in the rows are relative to the annotation file's folder",
        fingerprint_name="folder",
    )
