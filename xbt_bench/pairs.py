"""Registered pairs: one TOML file each under ``model_zoo/pairs/`` (or a user folder).

A pair file names OLD and NEW as model references, the default evaluation dataset, the
data each method trains on, and per-method settings. Files are validated on load: first their
structure (:func:`parse_pair_file`), then what they name (:func:`check_pair`: registered methods
and their settings, known datasets and splits); every error names the file, the field and the
fix. A pair of stored embeddings (:func:`embeddings_pair`) names its models and data as
``embeddings:DIR``. Pair folders: the built-in ``model_zoo/pairs``, ``$XBT_BENCH_HOME/pairs``,
``$XBT_BENCH_PAIRS`` and those of installed packages (entry-point group ``xbt_bench.pairs``,
each naming a folder, or a function returning one).
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .console import warn
from .data.base import not_utf8
from .errors import ConfigError, XbtError, validation_message
from .models.refs import parse_model_ref
from .paths import home, model_zoo
from .registry import Registry

ENTRY_POINT_GROUP = "xbt_bench.pairs"
PAIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Names become file and folder names (results, plots): well under any file system's limit.
MAX_PAIR_NAME = 100
DATA_REF_HELP = "use DATASET:SPLIT (e.g. toy-shapes:pairs) or a path to a caption text file"


def check_pair_name(name: str) -> str:
    """``name`` if it is a safe file name for a pair (at most :data:`MAX_PAIR_NAME`
    characters); ConfigError otherwise."""
    if len(name) > MAX_PAIR_NAME:
        raise ConfigError(
            f"pair name {name[:40]!r}... is {len(name)} characters long; use at most "
            f"{MAX_PAIR_NAME}, e.g. 'b32-to-l14'"
        )
    if not PAIR_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"pair name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..'), e.g. 'b32-to-l14'"
        )
    return name


class DataRefs(BaseModel):
    """What the methods train on, as dataset references ``DATASET:SPLIT``."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="text-only corpus for stage 1 (captions, no images)")
    pairs: str = Field(description="image–caption pairs for stage 2")
    support: str = Field(description="split for choosing hyperparameters (e.g. SLERP's α)")


class PairSpec(BaseModel):
    """One registered upgrade OLD -> NEW (or a chain OLD -> VIA... -> NEW)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = Field(min_length=1)
    old: str
    new: str
    via: list[str] = Field(default_factory=list)
    dataset: str = Field(min_length=1, description="default evaluation dataset")
    splits: list[str] = Field(default_factory=lambda: ["test"], min_length=1)
    data: DataRefs
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_pair_name(value)

    @field_validator("old", "new")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model_ref(value)
        return value

    @field_validator("via")
    @classmethod
    def _model_refs(cls, value: list[str]) -> list[str]:
        for ref in value:
            parse_model_ref(ref)
        return value

    @model_validator(mode="after")
    def _distinct_models(self) -> PairSpec:
        repeated = sorted({ref for ref in self.chain if self.chain.count(ref) > 1})
        if repeated:
            raise ValueError(
                f"{', '.join(repeated)} appears more than once among old, via and new; an upgrade "
                "needs distinct models (compare a model with itself by running the method 'old')"
            )
        return self

    @property
    def chain(self) -> list[str]:
        """Every model of the upgrade, oldest first: ``[old, *via, new]``."""
        return [self.old, *self.via, self.new]

    @property
    def is_chain(self) -> bool:
        return bool(self.via)

    def method_config(self, method: str) -> dict[str, Any]:
        """This pair's settings for ``method`` (empty when the file gives none)."""
        return dict(self.methods.get(method, {}))

    def to_toml(self) -> str:
        """The pair as the TOML text of its file (without the name, which is the file's)."""
        import tomli_w

        return tomli_w.dumps(self.model_dump(exclude={"name"}, exclude_defaults=False))


def _format_validation_error(path: Path, error: ValidationError) -> str:
    field, message, kind = validation_message(error)
    if kind == "missing":
        fix = f"add `{field} = ...`"
    elif kind == "extra_forbidden":
        fix = f"remove `{field}` (allowed: {', '.join(PairSpec.model_fields)})"
    else:
        fix = "see model_zoo/pairs/b32-to-l14.toml for an example"
    return f"{path}: field '{field}': {message}; {fix}"


def parse_pair_file(path: Path) -> PairSpec:
    """Read and validate one pair file; ConfigError naming the file and field if bad."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(not_utf8(path, error)) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    if "name" in raw:
        raise ConfigError(f"{path}: field 'name': the pair's name is its file name; remove it")
    try:
        return PairSpec(name=path.stem, **raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(path, error)) from None
    except XbtError as error:
        raise ConfigError(f"{path}: {error}") from None


def _entry_point_dirs() -> list[Path]:
    """Pair folders of installed packages (entry-point group ``xbt_bench.pairs``)."""
    dirs = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry_point.load()
            dirs.append(Path(target() if callable(target) else target))
        except Exception as error:  # noqa: BLE001 - a broken plugin is named, not a traceback
            raise XbtError(
                f"pairs of the installed package entry point {entry_point.name!r} "
                f"({entry_point.value}) could not be loaded: {type(error).__name__}: {error}; "
                "fix or uninstall that package"
            ) from error
    return dirs


def pair_dirs() -> list[Path]:
    """Folders searched for pair files: built-ins, installed packages' (entry points),
    ``$XBT_BENCH_HOME/pairs`` and ``$XBT_BENCH_PAIRS`` (``os.pathsep``-separated). Later
    folders win on equal names."""
    dirs = [model_zoo() / "pairs", *_entry_point_dirs(), home() / "pairs"]
    extra = os.environ.get("XBT_BENCH_PAIRS", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return dirs


# Entries of pair folders already reported as skipped (each is reported once a process).
_skipped: set[Path] = set()


def pair_files() -> dict[str, list[Path]]:
    """Every pair file found, by name, in search order (the last one is the one used). An
    entry that is not a readable regular file (a folder named ``x.toml``, a broken link or a
    link loop) is skipped with one line saying so."""
    found: dict[str, list[Path]] = {}
    for folder in pair_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                if path.is_file() and os.access(path, os.R_OK):
                    found.setdefault(path.stem, []).append(path)
                elif path not in _skipped:
                    _skipped.add(path)
                    warn(
                        f"skipped {path}: not a readable pair file (a folder, a broken link or "
                        "a link loop); remove or rename it"
                    )
    return found


def pair_registry() -> Registry[Path]:
    """Every pair file found, by name (read afresh so new files show up at once); a later
    folder's file replaces an earlier one of the same name (:func:`shadowed_pairs` says which)."""
    registry: Registry[Path] = Registry("pair", hint="xbt-bench pairs list")
    for name, paths in pair_files().items():
        registry.register(name, paths[-1])
    return registry


def shadowed_pairs(name: str) -> list[Path]:
    """The files of pair ``name`` that another file of the same name replaces (e.g. a built-in
    pair redefined in ``$XBT_BENCH_HOME/pairs``); empty when there is one file."""
    return pair_files().get(name, [])[:-1]


def check_pair(spec: PairSpec, where: Path | str) -> PairSpec:
    """``spec`` when everything it names exists: each ``[methods.NAME]`` table names a
    registered method and only its settings (validated), and the datasets and splits it names
    are known; ConfigError naming ``where``, the field and the closest known name otherwise."""
    from .data.registry import check_split, split_data_ref
    from .methods import methods

    for method, settings in spec.methods.items():
        try:
            methods.get(method).parse_settings(settings)
        except XbtError as error:
            raise ConfigError(f"{where}: [methods.{method}]: {error}") from None
    refs = [("dataset", spec.dataset, split) for split in spec.splits]
    for field in ("pairs", "support"):
        refs.append((f"data.{field}", *split_data_ref(getattr(spec.data, field))))
    if not _is_text_file(spec.data.text):
        refs.append(("data.text", *split_data_ref(spec.data.text)))
    for field, dataset, split in refs:
        try:
            check_split(dataset, split)
        except XbtError as error:
            raise ConfigError(f"{where}: field '{field}': {error}") from None
    return spec


def _is_text_file(ref: str) -> bool:
    """Whether a corpus reference is a caption file rather than ``DATASET:SPLIT``."""
    path = Path(ref).expanduser()
    return path.suffix in (".txt", ".text") or path.is_file()


def load_pair(name: str) -> PairSpec:
    """The pair ``name``, parsed and checked (:func:`check_pair`); NotFoundError with a
    suggestion if unknown."""
    path = pair_registry().get(name)
    return check_pair(parse_pair_file(path), path)


def embeddings_pair(name: str, folder: str | Path, description: str | None = None) -> PairSpec:
    """The pair that reads the stored embeddings in ``folder`` (as ``xbt-bench embeddings dump``
    writes them, docs/embeddings-format.md): OLD is ``folder/old``, NEW ``folder/new``, and OLD's
    splits are the data: its text-only split the text corpus, ``support`` the support split,
    ``pairs`` (``support`` when there is none) the training pairs, every other split an
    evaluation split. ConfigError naming what the folder lacks."""
    from .data.embeddings import split_manifests

    folder = Path(folder).expanduser().resolve()
    old, new = (split_manifests(folder / role) for role in ("old", "new"))
    missing = sorted(set(old) - set(new))
    if missing:
        raise ConfigError(
            f"{folder / 'new'} lacks the splits {missing} that {folder / 'old'} has; NEW's "
            "embeddings of every split are needed (new->new and NEW's queries)"
        )
    corpus = [split for split, manifest in old.items() if manifest.images == 0]
    if len(corpus) != 1:
        raise ConfigError(
            f"{folder / 'old'} holds {len(corpus)} text-only splits {corpus} (images = 0); it "
            "needs exactly one: the text corpus the maps are fitted on"
        )
    if "support" not in old:
        raise ConfigError(
            f"{folder / 'old'} has no split 'support' (where SLERP's α and the backfill "
            f"calibration are chosen); its splits: {', '.join(old)}"
        )
    pairs = "pairs" if "pairs" in old else "support"
    evaluated = sorted(set(old) - {corpus[0], "support", pairs})
    if not evaluated:
        raise ConfigError(
            f"{folder / 'old'} has no evaluation split besides support, pairs and the text "
            f"corpus {corpus[0]!r}; add one (e.g. test)"
        )
    data = f"embeddings:{folder / 'old'}"
    first = old[evaluated[0]].model, new[evaluated[0]].model
    return PairSpec(
        name=name,
        description=description or f"{first[0]} -> {first[1]}, from the embeddings in {folder}",
        old=data,
        new=f"embeddings:{folder / 'new'}",
        dataset=data,
        splits=evaluated,
        data=DataRefs(
            text=f"{data}:{corpus[0]}", pairs=f"{data}:{pairs}", support=f"{data}:support"
        ),
    )


def write_pair(spec: PairSpec, folder: Path, overwrite: bool = False) -> Path:
    """Write ``spec`` as ``folder/<name>.toml`` (validated, atomic); refuse to overwrite."""
    from .atomic import write_text

    path = folder / f"{check_pair_name(spec.name)}.toml"
    if path.exists() and not overwrite:
        raise XbtError(f"{path} exists; pass --force to overwrite it")
    if not spec.description.isprintable():  # it also heads the file as a comment line
        raise ConfigError(
            f"pair {spec.name!r}: the description {spec.description!r} holds a line break or "
            "another control character; give it as one line"
        )
    text = spec.to_toml()
    check_pair(PairSpec(name=spec.name, **tomllib.loads(text)), f"pair {spec.name!r}")
    write_text(path, f"# {spec.description}\n{text}")
    return path
