"""Flickr30k, Flickr8k and MSCOCO captions through CLIP_benchmark, plus the large-scale
protocol sets (whole Flickr30k, COCO Karpathy val+restval, NoCaps val), all from a local root.

Nothing is ever downloaded. Before CLIP_benchmark's builder runs, the root, the annotation file
and the image folder are checked, so its download path (``wget``/``kaggle`` through
``subprocess.call``, or ``sys.exit``) is never reached; as a second guard its ``call`` is
replaced by one that refuses while it runs, and a ``SystemExit`` from it becomes an XbtError.

Layout under ``--data-root`` (the root itself, or a sub-folder named after the dataset; the
root may also contain ``{dataset}``, as CLIP_benchmark's ``--dataset_root`` does):

- ``flickr30k`` / ``flickr8k`` (splits train, val, test): the ``*.jpg`` images directly in the
  folder, and ``flickr30k_{split}_karpathy.txt`` (resp. ``flickr8k_...``) from
  https://github.com/mehdidc/retrieval_annotations/releases/tag/1.0.0 .
- ``mscoco_captions`` (splits train, val, test): ``val2014/`` (val, test) or ``train2014/``
  (train) from http://images.cocodataset.org/zips/ and ``coco_{split}_karpathy.json`` from the
  same release. Folder ``mscoco_captions``.
- ``flickr30k-all`` (split ``all``: Karpathy train+val+test, 31,014 images): the Flickr30k
  images as above and Karpathy's ``dataset_flickr30k.json``. Folder ``flickr30k``.
- ``coco-karpathy-val-restval`` (split ``val+restval``, 35,504 images): ``val2014/`` and
  Karpathy's ``dataset_coco.json``. Folder ``mscoco_captions``.
  Karpathy's files: https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip
- ``nocaps-val`` (split ``val``, 4,500 images, 10 captions each):
  ``nocaps_val_4500_captions.json`` from https://nocaps.s3.amazonaws.com/ and the Open Images
  validation images it lists, under ``val/``. Folder ``nocaps``.

Image order and captions follow CLIP_benchmark: Flickr images in order of first appearance
in the annotation file; COCO-format sets (``mscoco_captions``, ``nocaps-val``) through
torchvision's ``CocoCaptions`` (images by ascending id, captions in annotation order); Karpathy
json sets in file order, captions as their ``raw`` sentences.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

from ..errors import NotFoundError, XbtError
from .base import ImageTextSet
from .folder import check_not_empty, image_text_set, locate

RETRIEVAL_ANNOTATIONS = "https://github.com/mehdidc/retrieval_annotations/releases/download/1.0.0/"
KARPATHY_SPLITS_ZIP = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
NOCAPS_VAL_JSON = "https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json"
COCO_IMAGES = "http://images.cocodataset.org/zips/"

KARPATHY_SPLITS = ("train", "val", "test")
FLICKR_IMAGES = {
    "flickr30k": "put the Flickr30k *.jpg images directly in that folder (e.g. `kaggle datasets "
    "download -d hsankesara/flickr-image-dataset`, folder flickr30k_images)",
    "flickr8k": "put the Flickr8k *.jpg images directly in that folder (e.g. `kaggle datasets "
    "download -d adityajn105/flickr8k`, folder Images)",
}
# Karpathy json sets: name -> (annotation, sub-folder of --data-root, {split: Karpathy splits}).
KARPATHY_JSON_SETS: dict[str, tuple[str, str, dict[str, frozenset[str]]]] = {
    "flickr30k-all": (
        "dataset_flickr30k.json", "flickr30k", {"all": frozenset({"train", "val", "test"})}
    ),
    "coco-karpathy-val-restval": (
        "dataset_coco.json", "mscoco_captions", {"val+restval": frozenset({"val", "restval"})}
    ),
}
KARPATHY_IMAGES = {
    "flickr30k-all": FLICKR_IMAGES["flickr30k"],
    "coco-karpathy-val-restval": f"unzip {COCO_IMAGES}val2014.zip there (folder val2014/)",
}


def _check_split(dataset: str, split: str, splits: tuple[str, ...] | list[str]) -> None:
    if split not in splits:
        raise NotFoundError(
            f"dataset {dataset!r} has no split {split!r}; its splits: {', '.join(splits)}"
        )


def _refuse_download(command: object, *args: object, **kwargs: object) -> int:
    raise XbtError(
        f"CLIP_benchmark tried to run {command!r}; xbt-bench never downloads, put the files "
        "under --data-root (see `xbt-bench datasets list`)"
    )


def build_with_clip_benchmark(dataset: str, split: str, root: Path, annotation: Path) -> Any:
    """CLIP_benchmark's ``build_dataset`` for a retrieval set whose files were checked, with
    downloads refused, its prints silenced and its exits and errors turned into XbtError."""
    try:
        from clip_benchmark.datasets import builder
    except ImportError as error:
        raise XbtError(
            f"CLIP_benchmark is needed for {dataset}: pip install clip-benchmark ({error})"
        ) from None
    try:
        with mock.patch.object(builder, "call", _refuse_download), redirect_stdout(io.StringIO()):
            return builder.build_dataset(
                dataset,
                root=str(root),
                split=split,
                transform=None,
                download=False,
                annotation_file=str(annotation),
                task="zeroshot_retrieval",
            )
    except SystemExit as exit_:
        raise XbtError(
            f"CLIP_benchmark stopped (exit {exit_.code}) while reading {dataset}:{split} from "
            f"{root}; check the files listed by `xbt-bench datasets list`"
        ) from None
    except XbtError:
        raise
    except ImportError as error:
        raise XbtError(f"reading {dataset} needs a missing package: {error}") from None
    except Exception as error:  # its parsers raise anything on a malformed file
        raise XbtError(
            f"CLIP_benchmark could not read {annotation} for {dataset}:{split}: "
            f"{type(error).__name__}: {error}"
        ) from None


def _load_flickr(dataset: str, split: str, root: Path | str | None) -> ImageTextSet:
    _check_split(dataset, split, KARPATHY_SPLITS)
    annotation_name = f"{dataset}_{split}_karpathy.txt"
    get_it = f"download {RETRIEVAL_ANNOTATIONS}{annotation_name} into the data root"
    base = locate(dataset, root, annotation_name, [dataset], get_it)
    annotation = base / annotation_name
    check_not_empty(annotation, get_it)
    flickr = build_with_clip_benchmark(dataset, split, base, annotation)
    return image_text_set(
        dataset, split, Path(flickr.root), annotation, flickr.data,
        get_images=FLICKR_IMAGES[dataset],
    )


def _coco_format_set(
    name: str, split: str, images_dir: Path, annotation: Path, coco: Any, get_images: str
) -> ImageTextSet:
    """A set from a torchvision ``CocoCaptions``: images by its ``ids``, captions in order."""
    images = []
    try:
        for image_id in coco.ids:
            file_name = coco.coco.loadImgs(image_id)[0]["file_name"]
            anns = coco.coco.loadAnns(coco.coco.getAnnIds(image_id))
            images.append((file_name, [ann["caption"] for ann in anns]))
    except (KeyError, TypeError) as error:
        raise XbtError(
            f"{annotation} is not a COCO caption file (images need 'file_name', annotations "
            f"'image_id' and 'caption'): {type(error).__name__}: {error}"
        ) from None
    return image_text_set(name, split, images_dir, annotation, images, get_images=get_images)


def load_flickr30k(split: str, root: Path | str | None = None) -> ImageTextSet:
    """Flickr30k Karpathy ``split`` (train/val/test) via CLIP_benchmark from a local root."""
    return _load_flickr("flickr30k", split, root)


def load_flickr8k(split: str, root: Path | str | None = None) -> ImageTextSet:
    """Flickr8k Karpathy ``split`` (train/val/test) via CLIP_benchmark from a local root."""
    return _load_flickr("flickr8k", split, root)


def load_mscoco_captions(split: str, root: Path | str | None = None) -> ImageTextSet:
    """MSCOCO 2014 Karpathy ``split`` (train/val/test) via CLIP_benchmark from a local root."""
    dataset = "mscoco_captions"
    _check_split(dataset, split, KARPATHY_SPLITS)
    annotation_name = f"coco_{split}_karpathy.json"
    get_it = f"download {RETRIEVAL_ANNOTATIONS}{annotation_name} into the data root"
    base = locate(dataset, root, annotation_name, [dataset], get_it)
    annotation = base / annotation_name
    check_not_empty(annotation, get_it)
    folder = "train2014" if split == "train" else "val2014"
    get_images = f"unzip {COCO_IMAGES}{folder}.zip in {base} (folder {folder}/)"
    if not (base / folder).is_dir():
        raise NotFoundError(
            f"dataset {dataset!r}: image folder {base / folder} is missing; {get_images}"
        )
    coco = build_with_clip_benchmark(dataset, split, base, annotation)
    return _coco_format_set(dataset, split, Path(coco.root), annotation, coco, get_images)


def _karpathy_images(
    annotation: Path, karpathy_splits: frozenset[str], get_it: str
) -> list[tuple[str, list[str]]]:
    try:
        content = json.loads(annotation.read_text(encoding="utf-8"))
        entries = content["images"]
        return [
            (
                str(Path(entry.get("filepath", "")) / entry["filename"]),
                [sentence["raw"].strip() for sentence in entry["sentences"]],
            )
            for entry in entries
            if entry["split"] in karpathy_splits
        ]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise XbtError(
            f"{annotation} is not a Karpathy split file ({{'images': [{{'filename', 'split', "
            f"'sentences': [{{'raw'}}]}}]}}; {type(error).__name__}: {error}); {get_it}"
        ) from None


def _load_karpathy_json(dataset: str, split: str, root: Path | str | None) -> ImageTextSet:
    annotation_name, folder, splits = KARPATHY_JSON_SETS[dataset]
    _check_split(dataset, split, list(splits))
    get_it = f"take {annotation_name} from {KARPATHY_SPLITS_ZIP}"
    base = locate(dataset, root, annotation_name, [folder], get_it)
    annotation = base / annotation_name
    check_not_empty(annotation, get_it)
    images = _karpathy_images(annotation, splits[split], get_it)
    return image_text_set(
        dataset, split, base, annotation, images, get_images=KARPATHY_IMAGES[dataset]
    )


def load_flickr30k_all(split: str = "all", root: Path | str | None = None) -> ImageTextSet:
    """All of Flickr30k (Karpathy train+val+test), the large-scale protocol's gallery."""
    return _load_karpathy_json("flickr30k-all", split, root)


def load_coco_karpathy_val_restval(
    split: str = "val+restval", root: Path | str | None = None
) -> ImageTextSet:
    """COCO 2014 Karpathy val + restval, the large-scale protocol's COCO gallery."""
    return _load_karpathy_json("coco-karpathy-val-restval", split, root)


def load_nocaps_val(split: str = "val", root: Path | str | None = None) -> ImageTextSet:
    """NoCaps validation (4,500 Open Images photos, 10 captions each) from a local root."""
    dataset = "nocaps-val"
    _check_split(dataset, split, ["val"])
    annotation_name = NOCAPS_VAL_JSON.rsplit("/", 1)[1]
    get_it = f"download {NOCAPS_VAL_JSON} into the data root"
    base = locate(dataset, root, annotation_name, ["nocaps"], get_it)
    annotation = base / annotation_name
    check_not_empty(annotation, get_it)
    get_images = (
        f"put the Open Images validation images listed in {annotation_name} (their file_name) "
        f"in {base / 'val'}"
    )
    if not (base / "val").is_dir():
        raise NotFoundError(
            f"dataset {dataset!r}: image folder {base / 'val'} is missing; {get_images}"
        )
    try:
        from torchvision.datasets import CocoCaptions

        with redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = CocoCaptions(root=str(base / "val"), annFile=str(annotation))
    except ImportError as error:
        raise XbtError(f"reading {dataset} needs a missing package: {error}") from None
    except Exception as error:  # pycocotools raises anything on a malformed file
        raise XbtError(
            f"{annotation} is not a COCO-format caption file: {type(error).__name__}: {error}; "
            f"{get_it}"
        ) from None
    return _coco_format_set(dataset, split, base / "val", annotation, coco, get_images)
