"""Toy models: the tiny open_clip models of the model zoo, as data (``model_zoo/models/``).

Each toy model ``NAME`` is a set of files in ``model_zoo/models/``:

- ``NAME.json``: its open_clip model config (registered with ``open_clip.add_model_config``);
- ``NAME.train.json``: its recipe (steps, batch size, learning rate, contrastive temperature
  and whether it is learned, the toy data config), read into :class:`ZooSettings`;
- ``NAME.safetensors`` and ``NAME.card.json``: the shipped fp16 weights and their card (test
  retrieval, geometry, the recipe's content hash, the weights' SHA-256), so every machine
  evaluates the same model (training on another CPU rounds floats differently).

``zoo:NAME`` loads the shipped weights (:func:`zoo_weights`, the model loader's entry for the
``zoo`` kind), checked against their card's SHA-256 the first time a process loads them
(:func:`verified_weights`: a file changed since it was shipped is refused in one line). A toy
model without shipped weights (a user's new config, or quick builds for tests) loads from its
build folder in the cache, ``$XBT_BENCH_HOME/zoo/NAME-HASH`` (open_clip's layout), written by
``xbt-bench zoo build`` (:mod:`xbt_bench.toy.build`). ``HASH`` covers the model config, the
recipe and the toy data config, so changing any of them is another model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..atomic import sha256_of
from ..data.base import fingerprint_of
from ..errors import ConfigError, NotFoundError, XbtError, did_you_mean, require
from ..models.loading import Weights
from ..models.refs import ModelRef
from ..paths import cache_dir, zoo_models_dir
from .world import ToyConfig

WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"
CARD_NAME = "card.json"
TRAIN_SUFFIX = ".train.json"
SHIPPED_WEIGHTS_SUFFIX = ".safetensors"
SHIPPED_CARD_SUFFIX = ".card.json"
# Bump when the training code changes in a way that changes the weights it produces.
RECIPE_VERSION = 2
# Quick builds: the same architectures on a small toy world, for far fewer steps.
QUICK_TOY_CONFIG = ToyConfig(
    n_pretrain=4000, n_text=2000, n_pairs=1000, n_support=200, n_test=200, n_test_hard=200
)
QUICK_MAX_STEPS = 150
QUICK_BATCH_SIZE = 64
QUICK_MAX_WARMUP = 15
# A low-temperature recipe needs hundreds of steps to leave its initial plateau; a quick build
# at tau = 0.005 stays at chance, at 0.02 it learns within its few steps.
QUICK_MIN_TEMPERATURE = 0.02


@dataclass(frozen=True)
class ZooSettings:
    """How one toy model is trained (``NAME.train.json``); all but ``description`` is hashed."""

    steps: int
    batch_size: int
    lr: float
    temperature: float
    learn_temperature: bool = False
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    data: ToyConfig = field(default_factory=ToyConfig)
    description: str = ""

    def __post_init__(self) -> None:
        problems = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 2,  # a contrastive loss needs two
            "lr": self.lr > 0,
            "temperature": 0 < self.temperature < 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": 0 <= self.warmup_steps,
        }
        require(
            self,
            problems,
            "toy recipe",
            "steps >= 1, batch_size >= 2, lr > 0, 0 < temperature < 1, weight_decay >= 0, "
            "warmup_steps >= 0",
        )

    def quick(self) -> ZooSettings:
        """The recipe shrunk for tests: small toy world, small batch, few steps, warmer tau."""
        steps = min(self.steps, QUICK_MAX_STEPS)
        return replace(
            self,
            steps=steps,
            batch_size=min(self.batch_size, QUICK_BATCH_SIZE),
            warmup_steps=min(self.warmup_steps, QUICK_MAX_WARMUP, steps),
            temperature=max(self.temperature, QUICK_MIN_TEMPERATURE),
            data=QUICK_TOY_CONFIG,
            description=f"{self.description} (quick build)",
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return asdict(self)


@dataclass(frozen=True)
class ZooEntry:
    """One toy model: its configs, its recipe, and where its weights are."""

    name: str
    model_config: dict[str, Any]
    settings: ZooSettings

    @property
    def content_hash(self) -> str:
        """A hash of the model config, training settings, toy data and recipe version."""
        settings = self.settings.to_dict()
        del settings["description"], settings["data"]
        return fingerprint_of(
            [
                RECIPE_VERSION,
                json.dumps(self.model_config, sort_keys=True),
                json.dumps(settings, sort_keys=True),
                self.settings.data.fingerprint(),
            ]
        )[:12]

    @property
    def folder(self) -> Path:
        """The build folder (open_clip layout) of this recipe in the cache."""
        return cache_dir("zoo") / f"{self.name}-{self.content_hash}"

    @property
    def built_weights(self) -> Path:
        """The weights a build of this recipe writes (``folder/open_clip_model.safetensors``)."""
        return self.folder / WEIGHTS_NAME

    @property
    def is_built(self) -> bool:
        """Whether a build of this recipe is in the cache (weights and card)."""
        return self.built_weights.is_file() and (self.folder / CARD_NAME).is_file()

    @property
    def shipped_weights(self) -> Path:
        """``model_zoo/models/NAME.safetensors`` (it may not exist)."""
        return zoo_models_dir() / f"{self.name}{SHIPPED_WEIGHTS_SUFFIX}"

    @property
    def shipped_card_path(self) -> Path:
        """``model_zoo/models/NAME.card.json`` (it may not exist)."""
        return zoo_models_dir() / f"{self.name}{SHIPPED_CARD_SUFFIX}"

    @property
    def ships_weights(self) -> bool:
        """Whether the package ships weights for this recipe (quick recipes never do)."""
        card = self.shipped_card()
        return (
            self.shipped_weights.is_file()
            and card is not None
            and card.get("content_hash") == self.content_hash
        )

    @property
    def weights_path(self) -> Path:
        """The weights ``zoo:NAME`` loads: the shipped file, else this recipe's build in the
        cache; NotFoundError saying how to build it when there is neither."""
        if self.ships_weights:
            return self.shipped_weights
        if self.is_built:
            return self.built_weights
        raise NotFoundError(
            f"toy model {self.name!r} has no shipped weights ({self.shipped_weights}) and is not "
            f"built in {self.folder}; build it with `xbt-bench zoo build {self.name}`"
        )

    def shipped_card(self) -> dict[str, Any] | None:
        """The shipped weights' card, or None."""
        path = self.shipped_card_path
        return json.loads(path.read_text()) if path.is_file() else None

    def card(self) -> dict[str, Any] | None:
        """The card of the weights ``zoo:NAME`` loads (shipped, else built), or None."""
        if self.ships_weights:
            return self.shipped_card()
        path = self.folder / CARD_NAME
        return json.loads(path.read_text()) if path.is_file() else None


def zoo_names() -> list[str]:
    """Names of the toy models (each ``*.train.json`` with its config), smallest first."""
    folder = zoo_models_dir()
    dims = {}
    for path in folder.glob(f"*{TRAIN_SUFFIX}"):
        name = path.name[: -len(TRAIN_SUFFIX)]
        config = folder / f"{name}.json"
        if config.is_file():
            dims[name] = json.loads(config.read_text()).get("embed_dim", 0)
    return sorted(dims, key=lambda name: (dims[name], name))


def zoo_entry(name: str, quick: bool = False) -> ZooEntry:
    """The toy model ``name`` as configured (its quick recipe if ``quick``)."""
    names = zoo_names()
    folder = zoo_models_dir()
    if name not in names:
        raise NotFoundError(
            f"toy model {name!r} not found; {did_you_mean(name, names, 'known toy models')} "
            f"(configs in {folder}; see `xbt-bench zoo list`)"
        )
    model_config = json.loads((folder / f"{name}.json").read_text())
    raw = json.loads((folder / f"{name}{TRAIN_SUFFIX}").read_text())
    try:
        data = ToyConfig(**raw.pop("data", {}))
        settings = ZooSettings(**raw, data=data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{folder / (name + TRAIN_SUFFIX)}: {error}") from error
    return ZooEntry(name, model_config, settings.quick() if quick else settings)


# File versions (resolved path, size, mtime) this process has verified.
_verified: set[tuple[str, int, int]] = set()


def verified_weights(entry: ZooEntry) -> Path:
    """The weights ``zoo:NAME`` loads (:attr:`ZooEntry.weights_path`); shipped weights are
    first checked against their card's SHA-256 (once per file version in this process),
    XbtError naming the file and ``xbt-bench zoo build`` when they differ. A build in the cache
    has no recorded hash and is returned as it is."""
    path = entry.weights_path
    if path != entry.shipped_weights:
        return path
    stat = path.stat()
    version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if version in _verified:
        return path
    card = entry.shipped_card() or {}
    if sha256_of(path) != card.get("weights_sha256"):
        raise XbtError(
            f"shipped weights {path} do not match the weights_sha256 of their card "
            f"{entry.shipped_card_path} (the file changed after it was shipped); restore it from "
            f"the package, or rebuild and ship it with `xbt-bench zoo build {entry.name} --ship`"
        )
    _verified.add(version)
    return path


def zoo_weights(ref: ModelRef) -> Weights:
    """``zoo:NAME``: the toy model's shipped weights (verified against their card), else its
    build in the cache (the weight source the model loader's table names for the ``zoo`` kind)."""
    return Weights(ref.name, verified_weights(zoo_entry(ref.name)))
