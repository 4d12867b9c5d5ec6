"""Registered pairs: one TOML file each under ``model_zoo/pairs/`` (or a user folder).

A pair file names OLD and NEW as model references, the default evaluation dataset, the
data each method trains on, and per-method settings. Files are validated on load; every
error names the file, the field and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, XbtError
from .models.refs import parse_model_ref
from .paths import home
from .registry import Registry

BUILTIN_PAIRS = Path(__file__).resolve().parent / "model_zoo" / "pairs"
PAIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DATA_REF_HELP = "use DATASET:SPLIT (e.g. toy-shapes:pairs) or a path to a caption text file"


def check_pair_name(name: str) -> str:
    """``name`` if it is a safe file name for a pair; ConfigError otherwise."""
    if not PAIR_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"pair name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..'), e.g. 'b32-to-l14'"
        )
    return name


class PairData(BaseModel):
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
    data: PairData
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
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(file)"
    message = first["msg"]
    if first["type"] == "missing":
        fix = f"add `{field} = ...`"
    elif first["type"] == "extra_forbidden":
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
    if "name" in raw:
        raise ConfigError(f"{path}: field 'name': the pair's name is its file name; remove it")
    try:
        return PairSpec(name=path.stem, **raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(path, error)) from None
    except XbtError as error:
        raise ConfigError(f"{path}: {error}") from None


def pair_dirs() -> list[Path]:
    """Folders searched for pair files: built-ins, ``$XBT_BENCH_HOME/pairs``, and
    ``$XBT_BENCH_PAIRS`` (``os.pathsep``-separated). Later folders win on equal names."""
    dirs = [BUILTIN_PAIRS, home() / "pairs"]
    extra = os.environ.get("XBT_BENCH_PAIRS", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return dirs


def pair_registry() -> Registry[Path]:
    """Every pair file found, by name (read afresh so new files show up at once)."""
    registry: Registry[Path] = Registry("pair", hint="xbt-bench pairs list")
    found: dict[str, Path] = {}
    for folder in pair_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found[path.stem] = path
    for name, path in found.items():
        registry.register(name, path)
    return registry


def load_pair(name: str) -> PairSpec:
    """The validated pair ``name``; NotFoundError with a suggestion if unknown."""
    return parse_pair_file(pair_registry().get(name))


def write_pair(spec: PairSpec, folder: Path, overwrite: bool = False) -> Path:
    """Write ``spec`` as ``folder/<name>.toml`` (validated, atomic); refuse to overwrite."""
    from .atomic import write_text

    path = folder / f"{check_pair_name(spec.name)}.toml"
    if path.exists() and not overwrite:
        raise XbtError(f"{path} exists; pass --force to overwrite it")
    text = spec.to_toml()
    PairSpec(name=spec.name, **tomllib.loads(text))
    write_text(path, f"# {spec.description}\n{text}")
    return path
