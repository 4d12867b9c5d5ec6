"""The dataset registry: a name maps to a loader ``(split, root) -> ImageTextSet``.

Loaders are registered lazily (``"module:attr"``) so listing datasets imports nothing heavy.
Three name patterns are resolved before the registry lookup: ``folder:PATH`` (images plus a CSV
or JSONL of image,caption rows), ``wds/<name>`` (a webdataset in CLIP_benchmark's layout) and
``embeddings:DIR`` (a model's stored embeddings, whose splits come from their manifests:
:mod:`.embeddings`).
Data references in pair files are ``NAME:SPLIT`` (the split after the last colon, so
``folder:/data/coco:train`` works); a text corpus may also be a path to a text file with one
caption per line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import ConfigError, NotFoundError, XbtError, did_you_mean
from ..registry import Registry
from .base import ImageTextSet, TextCorpus, not_utf8

DatasetLoader = Callable[[str, "Path | str | None"], ImageTextSet]

FOLDER_PREFIX = "folder:"
WDS_PREFIX = "wds/"
EMBEDDINGS_PREFIX = "embeddings:"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``xbt-bench datasets list`` shows about a dataset (or a name pattern)."""

    name: str
    kind: str
    splits: tuple[str, ...]
    needs: str
    loader: str = ""  # "module:attr" of the loader; empty for name patterns
    eval_splits: tuple[str, ...] = ()  # what a new pair evaluates on (default: default_split)

    @property
    def default_split(self) -> str:
        """The split used when none is named: a single named split, else ``test``."""
        return self.splits[0] if len(self.splits) == 1 and self.splits[0] != "any" else "test"

    @property
    def evaluation_splits(self) -> list[str]:
        """The splits a new pair on this dataset is scored on (``pairs add`` without --split)."""
        return list(self.eval_splits or (self.default_split,))


_CB = "xbt_bench.data.clip_benchmark"
_KARPATHY = ("train", "val", "test")
DATASET_INFOS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        "toy-shapes", "toy world", ("pretrain", "text", "pairs", "support", "test", "test-hard"),
        "nothing (generated and cached)", "xbt_bench.toy.world:load_toy_dataset",
        eval_splits=("test", "test-hard"),
    ),
    DatasetInfo(
        "flickr30k", "CLIP_benchmark", _KARPATHY,
        "*.jpg images + flickr30k_{split}_karpathy.txt", f"{_CB}:load_flickr30k",
    ),
    DatasetInfo(
        "flickr8k", "CLIP_benchmark", _KARPATHY,
        "*.jpg images + flickr8k_{split}_karpathy.txt", f"{_CB}:load_flickr8k",
    ),
    DatasetInfo(
        "mscoco_captions", "CLIP_benchmark", _KARPATHY,
        "val2014/ (train: train2014/) + coco_{split}_karpathy.json",
        f"{_CB}:load_mscoco_captions",
    ),
    DatasetInfo(
        "flickr30k-all", "large-scale protocol", ("all",),
        "Flickr30k *.jpg images + dataset_flickr30k.json (Karpathy)", f"{_CB}:load_flickr30k_all",
    ),
    DatasetInfo(
        "coco-karpathy-val-restval", "large-scale protocol", ("val+restval",),
        "val2014/ + dataset_coco.json (Karpathy)", f"{_CB}:load_coco_karpathy_val_restval",
    ),
    DatasetInfo(
        "nocaps-val", "large-scale protocol", ("val",),
        "val/ (Open Images) + nocaps_val_4500_captions.json", f"{_CB}:load_nocaps_val",
    ),
)
PATTERN_INFOS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        f"{WDS_PREFIX}<name>", "webdataset", ("any",),
        "{split}/nshards.txt + {split}/0.tar.. (CLIP_benchmark layout)",
    ),
    DatasetInfo(
        f"{FOLDER_PREFIX}PATH", "folder", ("any",),
        "images + {split}.csv or {split}.jsonl of image,caption rows (or PATH = that file)",
    ),
    DatasetInfo(
        f"{EMBEDDINGS_PREFIX}DIR", "stored embeddings", ("any",),
        "{split}/manifest.json + vectors and index (.npy or Parquet; docs/embeddings-format.md)",
    ),
)
# Published sizes (images, captions), shown by `datasets check` next to what was found.
EXPECTED_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("flickr30k", "test"): (1_000, 5_000),
    ("flickr8k", "test"): (1_000, 5_000),
    ("mscoco_captions", "test"): (5_000, 25_010),
    ("flickr30k-all", "all"): (31_014, 155_070),
    ("coco-karpathy-val-restval", "val+restval"): (35_504, 177_644),
    ("nocaps-val", "val"): (4_500, 45_000),
}

datasets: Registry[DatasetLoader] = Registry("dataset", hint="xbt-bench datasets list")
for _info in DATASET_INFOS:
    datasets.register(_info.name, _info.loader)


def dataset_info(name: str) -> DatasetInfo:
    """The listing entry of a registered name, ``wds/<name>`` or ``folder:PATH``."""
    if name.startswith(FOLDER_PREFIX):
        return PATTERN_INFOS[1]
    if name.startswith(WDS_PREFIX):
        return PATTERN_INFOS[0]
    if name.startswith(EMBEDDINGS_PREFIX):
        return PATTERN_INFOS[2]
    canonical = datasets.canonical(name)
    return next(info for info in DATASET_INFOS if info.name == canonical)


def resolve_dataset(name: str) -> DatasetLoader:
    """The loader for ``name``: ``folder:PATH`` and ``wds/<name>`` first, then the registry."""
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX):]
        if not path:
            raise ConfigError("folder dataset needs a path: folder:PATH")
        from .folder import load_folder_dataset

        return partial(load_folder_dataset, path)
    if name.startswith(WDS_PREFIX):
        wds_name = name[len(WDS_PREFIX):]
        if not wds_name:
            raise ConfigError("webdataset needs a name: wds/<name>")
        from .wds import load_wds_dataset

        return partial(load_wds_dataset, wds_name)
    if name.startswith(EMBEDDINGS_PREFIX):
        from .embeddings import load_embeddings_dataset

        return partial(load_embeddings_dataset, _embeddings_folder(name))
    return datasets.get(name)


def _embeddings_folder(name: str) -> str:
    """The folder of an ``embeddings:DIR`` name; ConfigError when it names none."""
    folder = name[len(EMBEDDINGS_PREFIX) :]
    if not folder:
        raise ConfigError("stored embeddings need a folder: embeddings:DIR")
    return folder


def split_data_ref(ref: str) -> tuple[str, str]:
    """``"NAME:SPLIT"`` -> ``(NAME, SPLIT)``; ConfigError if there is no split."""
    name, sep, split = ref.rpartition(":")
    if not sep or not name or not split:
        raise ConfigError(
            f"data reference {ref!r} needs a split: use NAME:SPLIT, e.g. toy-shapes:test"
        )
    return name, split


def check_split(name: str, split: str) -> str:
    """``split`` when dataset ``name`` has it (any split for ``folder:`` and ``wds/`` datasets);
    NotFoundError with the closest name otherwise (also for an unknown dataset)."""
    info = dataset_info(name)
    if "any" in info.splits or split in info.splits:
        return split
    raise NotFoundError(
        f"dataset {name!r} has no split {split!r}; {did_you_mean(split, info.splits, 'its splits')}"
    )


def load_dataset(name: str, split: str, root: Path | str | None = None) -> ImageTextSet:
    """The ``split`` of dataset ``name`` (found under ``root`` for datasets on disk)."""
    return resolve_dataset(name)(check_split(name, split), root)


@dataclass(frozen=True)
class DatasetCheck:
    """What ``xbt-bench datasets check`` found for one dataset split."""

    key: str
    n_images: int
    n_captions: int
    captions_per_image: tuple[int, int]  # min, max
    fingerprint: str
    sources: dict[str, str]
    expected: tuple[int, int] | None  # published (images, captions), when known

    @property
    def matches_expected(self) -> bool | None:
        """Whether the counts equal the published ones (None when there are none)."""
        return None if self.expected is None else self.expected == (self.n_images, self.n_captions)


def _decode_problem(data: ImageTextSet, index: int) -> str:
    """Why image ``index`` of ``data`` cannot be decoded in full ("" when it can)."""
    try:
        image = data.load_image(index)
        image.load()  # decodes every byte: a truncated or empty file fails here
    except Exception as error:  # noqa: BLE001 - every decoding failure is reported, by row
        return f"{type(error).__name__}: {error}"
    return ""


def check_dataset(
    name: str, split: str, root: Path | str | None = None, progress: bool = True
) -> DatasetCheck:
    """Load ``name:split`` (every file checked), decode every image in full (verify every
    vector of stored embeddings), and count; XbtError naming the first image that does not
    decode (and how many do not), or the stored file that fails verification."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from rich.progress import Progress

    data = load_dataset(name, split, root)
    if name.startswith(EMBEDDINGS_PREFIX):  # no images to decode: verify the stored vectors
        from .embeddings import describe_split

        counts = np.bincount(data.caption_image, minlength=data.n_images)
        return DatasetCheck(
            key=data.key,
            n_images=data.n_images,
            n_captions=len(data.captions),
            captions_per_image=(int(counts.min()), int(counts.max())),
            fingerprint=data.fingerprint,
            sources=describe_split(_embeddings_folder(name), split),
            expected=None,
        )
    with Progress(transient=True, disable=not progress) as bar, ThreadPoolExecutor(4) as pool:
        task = bar.add_task(f"decode {data.key} images", total=data.n_images)
        problems = {}
        for index, problem in enumerate(
            pool.map(lambda i: _decode_problem(data, i), range(data.n_images), chunksize=64)
        ):
            if problem:
                problems[index] = problem
            bar.advance(task)
    if problems:
        first = min(problems)
        raise XbtError(
            f"{data.key}: {len(problems)} of {data.n_images} images cannot be decoded; the first "
            f"is image {first} ({problems[first]}); replace the files or drop their rows"
        )
    counts = np.bincount(data.caption_image, minlength=data.n_images)
    describe = getattr(data.load_image, "describe", None)
    sources = describe() if callable(describe) else {"source": "generated"}
    return DatasetCheck(
        key=data.key,
        n_images=data.n_images,
        n_captions=len(data.captions),
        captions_per_image=(int(counts.min()), int(counts.max())),
        fingerprint=data.fingerprint,
        sources=sources,
        expected=EXPECTED_SIZES.get((name, split)),
    )


def load_text_corpus(ref: str, root: Path | str | None = None) -> TextCorpus:
    """A deduplicated caption corpus: a text file (one caption a line) or ``NAME:SPLIT``; or
    the caption vectors of a stored split, ``embeddings:DIR:SPLIT`` (one row per text, never
    deduplicated: :func:`~xbt_bench.data.embeddings.load_embeddings_corpus`).

    ``source`` records where it came from and how many captions it had before deduplication;
    ``len(texts)`` is its size after.
    """
    path = Path(ref).expanduser()
    if path.suffix in (".txt", ".text") or path.is_file():
        if not path.is_file():
            raise NotFoundError(f"text corpus file {path} does not exist")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as error:
            raise XbtError(f"text corpus {not_utf8(path, error)}") from None
        if not lines:
            raise XbtError(f"text corpus file {path} has no captions; write one caption per line")
        return TextCorpus.from_texts(
            path.name, lines, source=f"file {path} ({len(lines)} non-empty lines)"
        )
    name, split = split_data_ref(ref)
    if name.startswith(EMBEDDINGS_PREFIX):
        from .embeddings import load_embeddings_corpus

        return load_embeddings_corpus(_embeddings_folder(name), split)
    data = load_dataset(name, split, root)
    return TextCorpus.from_texts(
        f"{name}:{split}", data.captions, source=f"captions of {data.key} ({len(data.captions)})"
    )


def corpus_summary(corpus: TextCorpus) -> dict[str, object]:
    """What a result records about a text corpus: name, size (unique captions), source, hash."""
    return {
        "name": corpus.name,
        "size": len(corpus.texts),
        "source": corpus.source,
        "fingerprint": corpus.fingerprint,
    }
