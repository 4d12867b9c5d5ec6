"""Building toy models from their recipes (``model_zoo/models/NAME.train.json``).

:func:`build` trains a toy model with open_clip's ``ClipLoss`` through the shared training loop
on the toy ``pretrain`` split and stores it in its cache folder
(``$XBT_BENCH_HOME/zoo/NAME-HASH``, open_clip's layout: ``open_clip_model.safetensors`` plus
``open_clip_config.json``) with ``card.json`` beside it: test retrieval, the embedding geometry
(matched-pair cosine, modality gap, intra-modal cosines) and the training curve. :func:`ship`
copies a build into ``model_zoo/models/`` as fp16 weights with its card: what ``zoo:NAME``
loads on every machine. Another machine (another CPU, another thread count) rounds floats
differently, so a rebuild gives slightly different weights than the shipped ones.

*Quick* builds (``quick=True``) train the same architectures for 150 steps at batch 64 and
tau >= 0.02 on a small toy world: weak but trained models (seconds each) that check the
building path; they are stored under their own hash and never shipped.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..atomic import sha256_of, write_json, write_with
from ..embed import Encoder, embed_images, embed_texts
from ..embed.tokens import token_table
from ..errors import ConfigError
from ..eval import Embeddings
from ..eval.diagnostics import intra_cosine, matched_cosine, modality_gap
from ..models.loading import TRIM_CHECK_CAPTIONS, register_zoo_configs
from ..models.refs import parse_model_ref
from ..models.trim import enable_text_trimming
from ..scoring import score
from ..train import TrainConfig, TrainLog, train
from .world import ToyConfig, toy_images, toy_split
from .zoo import (
    CARD_NAME,
    CONFIG_NAME,
    TRAIN_SUFFIX,
    ZooEntry,
    ZooSettings,
    zoo_entry,
)

EVAL_SPLIT = "test"


def train_config(settings: ZooSettings, checkpoint_every: int = 100) -> TrainConfig:
    """The shared loop's config for a toy recipe."""
    return TrainConfig(
        steps=settings.steps,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=min(settings.warmup_steps, settings.steps),
        seed=settings.seed,
        checkpoint_every=checkpoint_every,
        log_every=max(1, min(25, settings.steps // 20)),
    )


def image_tensor(images: np.ndarray, mean: Any, std: Any) -> torch.Tensor:
    """uint8 [N, H, W, 3] images as the float [N, 3, H, W] batch ``preprocess`` would make."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    # The same ops as torchvision's ToTensor then Normalize, so the values are identical.
    return x.float().div(255).sub(mean_t).div(std_t)


@dataclass
class _PretrainBatches:
    """Deterministic contrastive batches of the toy ``pretrain`` split, one per step.

    Batches walk through a fresh random order of the images each epoch (a batch may span two
    epochs); each image comes with one of its captions, drawn per step.
    """

    images: np.ndarray  # uint8 [N, H, W, 3], in memory
    tokens: torch.Tensor  # int64 [N * captions_per_image, context]
    captions_per_image: int
    batch_size: int
    seed: int
    mean: Any
    std: Any
    _orders: dict[int, np.ndarray] = field(default_factory=dict)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(len(self.images))
        return self._orders[epoch]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.images)
        epochs, offsets = np.divmod(step * self.batch_size + np.arange(self.batch_size), n)
        index = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            index[epochs == epoch] = self._order(int(epoch))[offsets[epochs == epoch]]
        caption = np.random.default_rng([self.seed, n, step]).integers(
            self.captions_per_image, size=self.batch_size
        )
        images = image_tensor(self.images[index], self.mean, self.std)
        return images, self.tokens[index * self.captions_per_image + caption]


def _check_context(
    entry: ZooEntry, tokens: np.ndarray, captions: list[str], tokenizer: Any
) -> None:
    """Refuse captions that the tokenizer truncated (only rows that fill the context can be)."""
    context = tokens.shape[1]
    for row in np.flatnonzero(tokens[:, -1] != 0):
        n_tokens = len(tokenizer.encode(captions[row])) + 2  # with start and end tokens
        if n_tokens > context:
            raise ConfigError(
                f"{entry.name}: toy caption {captions[row]!r} needs {n_tokens} tokens but the "
                f"text context length is {context}; raise text_cfg.context_length in "
                f"{entry.name}.json"
            )


def _create_model(entry: ZooEntry) -> tuple[torch.nn.Module, Any]:
    """A freshly initialised model (seeded) with the configured temperature, and its tokenizer."""
    import open_clip

    register_zoo_configs()
    torch.manual_seed(entry.settings.seed)
    config = {**entry.model_config, "init_logit_scale": math.log(1.0 / entry.settings.temperature)}
    logging.disable(logging.WARNING)  # open_clip warns that the model is randomly initialised
    try:
        model = open_clip.create_model(entry.name, **config)
    finally:
        logging.disable(logging.NOTSET)
    model.logit_scale.requires_grad_(entry.settings.learn_temperature)
    context_length = entry.model_config["text_cfg"]["context_length"]
    tokenizer = open_clip.get_tokenizer(entry.name, context_length=context_length)
    enable_text_trimming(model, tokenizer(TRIM_CHECK_CAPTIONS))  # the padding is never computed
    return model, tokenizer


def _pretrain_batches(entry: ZooEntry, model: torch.nn.Module, tokenizer: Any) -> _PretrainBatches:
    import open_clip

    data = entry.settings.data
    size = model.visual.image_size
    if tuple(np.broadcast_to(size, 2)) != (data.image_size, data.image_size):
        raise ConfigError(
            f"{entry.name}: vision_cfg.image_size {size} differs from the toy data's image_size "
            f"{data.image_size}; set them equal in {entry.name}.json / {entry.name}{TRAIN_SUFFIX}"
        )
    split = toy_split("pretrain", data)
    captions = list(split.captions)
    tokens = token_table(tokenizer, captions, split.fingerprint)
    _check_context(entry, tokens, captions, tokenizer)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    return _PretrainBatches(
        images=np.array(toy_images("pretrain", data)),
        tokens=torch.from_numpy(np.array(tokens)).long(),
        captions_per_image=data.captions_per_image,
        batch_size=entry.settings.batch_size,
        seed=entry.settings.seed,
        mean=preprocess_cfg["mean"],
        std=preprocess_cfg["std"],
    )


def embed_toy_split(
    model: torch.nn.Module, tokenizer: Any, split: str, data: ToyConfig
) -> tuple[Embeddings, np.ndarray]:
    """A toy split embedded by a model being built (through :mod:`xbt_bench.embed`, uncached:
    the model has no identity yet), and its ``caption_image``."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    preprocess = open_clip.image_transform(
        model.visual.image_size, is_train=False, mean=cfg["mean"], std=cfg["std"]
    )
    encoder = Encoder(
        identity="toy build",
        encode_image=model.encode_image,
        encode_text=model.encode_text,
        preprocess=preprocess,
        tokenizer=tokenizer,
        preprocess_signature=repr(preprocess),
        tokenizer_signature=repr(tokenizer),
        device=next(model.parameters()).device,
        module=model,
    )
    dataset = toy_split(split, data)
    embedded = Embeddings(
        images=embed_images(encoder, dataset, num_workers=0),
        texts=embed_texts(encoder, dataset.captions, texts_key=dataset.fingerprint),
    )
    return embedded, dataset.caption_image


def embedding_geometry(embedded: Embeddings, caption_image: np.ndarray) -> dict[str, float]:
    """Matched-pair cosine, modality gap ‖mean(img) − mean(txt)‖ and intra-modal mean cosines
    (:mod:`xbt_bench.eval.diagnostics`)."""
    images, texts = embedded
    return {
        "matched_cosine": matched_cosine(images, texts, caption_image),
        "modality_gap": modality_gap(images, texts),
        "image_intra_cosine": intra_cosine(images, "images"),
        "text_intra_cosine": intra_cosine(texts, "texts"),
    }


def evaluate_toy_model(
    model: torch.nn.Module, tokenizer: Any, data: ToyConfig, split: str = EVAL_SPLIT
) -> dict[str, Any]:
    """Retrieval (R@1/5/10 both ways, rsum) and embedding geometry of ``model`` on a toy split."""
    embedded, caption_image = embed_toy_split(model, tokenizer, split, data)
    result = score(embedded, embedded, caption_image, f"toy-shapes/{split}")
    return {
        "split": split,
        "retrieval": {k: round(float(v), 2) for k, v in result.metrics.items()},
        "geometry": {
            k: round(v, 4) for k, v in embedding_geometry(embedded, caption_image).items()
        },
    }


def _save_open_clip_layout(entry: ZooEntry, model: torch.nn.Module) -> None:
    import open_clip
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_with(entry.built_weights, lambda tmp: save_file(state, str(tmp)))
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    write_json(
        entry.folder / CONFIG_NAME,
        {"model_cfg": entry.model_config, "preprocess_cfg": preprocess_cfg},
    )


def build(entry: ZooEntry) -> dict[str, Any]:
    """Train ``entry`` (resuming an interrupted build), save it and write its card.

    Under torchrun every rank calls it: the loss gathers the features of the global batch
    (open_clip's ``gather_with_grad``), rank 0 evaluates and writes, and every rank gets the card.
    """
    from open_clip.loss import ClipLoss

    started = time.perf_counter()
    model, tokenizer = _create_model(entry)
    batches = _pretrain_batches(entry, model, tokenizer)
    world = distributed.world_size()
    clip_loss = ClipLoss(gather_with_grad=True, rank=distributed.rank(), world_size=world)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_features, text_features, logit_scale = model(*batch)
        return {
            "loss": clip_loss(image_features, text_features, logit_scale),
            "temperature": 1.0 / logit_scale.detach(),
        }

    train_dir = entry.folder / "training"
    log: TrainLog = train(
        model, loss_fn, batches, train_config(entry.settings), train_dir, desc=entry.name
    )
    card = None
    if distributed.is_main():
        card = _finish_build(entry, model, tokenizer, log, started, train_dir)
    return distributed.broadcast_object(card)


def _finish_build(
    entry: ZooEntry,
    model: torch.nn.Module,
    tokenizer: Any,
    log: TrainLog,
    started: float,
    train_dir: Path,
) -> dict[str, Any]:
    """Evaluate the trained ``model``, save it in open_clip's layout and write its card."""
    evaluation = evaluate_toy_model(model, tokenizer, entry.settings.data)
    _save_open_clip_layout(entry, model)
    params = sum(p.numel() for p in model.parameters())
    card = {
        "name": entry.name,
        "content_hash": entry.content_hash,
        "embed_dim": int(entry.model_config["embed_dim"]),
        "parameters": params,
        "temperature_final": round(float(1.0 / model.logit_scale.detach().exp()), 5),
        **evaluation,
        "build_time_s": round(time.perf_counter() - started, 1),
        "train_time_s": round(log.wall_time_s, 1),
        "resumed_from_step": log.resumed_from_step,
        "model_config": entry.model_config,
        "settings": entry.settings.to_dict(),
        "toy_config_fingerprint": entry.settings.data.fingerprint(),
        "curve": log.curve,
    }
    write_json(entry.folder / CARD_NAME, card)
    shutil.rmtree(train_dir, ignore_errors=True)  # optimizer state is not needed any more
    return card


def ensure_built(entry: ZooEntry) -> ZooEntry:
    """``entry`` built first when neither shipped weights nor a build of it exist (resumes a
    partial build); under torchrun rank 0 decides for every rank."""
    if not distributed.broadcast_object(entry.ships_weights or entry.is_built):
        build(entry)
    return entry


def ensure_zoo_models(refs: list[str]) -> None:
    """Build the toy models among the model references ``refs`` (``zoo:NAME``) that have neither
    shipped weights nor a build (the runner calls it before loading)."""
    for ref in refs:
        parsed = parse_model_ref(ref)
        if parsed.kind == "zoo":
            ensure_built(zoo_entry(parsed.name))


def ship(entry: ZooEntry) -> Path:
    """Copy ``entry``'s build into ``model_zoo/models/`` as ``NAME.safetensors`` (fp16) and
    ``NAME.card.json`` (its card, re-evaluated with the fp16 weights, and their SHA-256)."""
    from safetensors.torch import load_file, save_file

    if not entry.is_built:
        raise ConfigError(f"toy model {entry.name!r} is not built; run `xbt-bench zoo build`")
    state = load_file(str(entry.built_weights))
    half = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}
    target = entry.shipped_weights
    write_with(target, lambda tmp: save_file(half, str(tmp)))
    model, tokenizer = _create_model(entry)
    model.load_state_dict({k: v.float() for k, v in half.items()})
    card = {
        **json.loads((entry.folder / CARD_NAME).read_text()),
        **evaluate_toy_model(model, tokenizer, entry.settings.data),
        "weights": target.name,
        "weights_dtype": "float16",
        "weights_sha256": sha256_of(target),
    }
    write_json(entry.shipped_card_path, card)
    return target


def ensure_checkpoint(name: str, settings: ZooSettings | None = None, quick: bool = False) -> Path:
    """The weights ``zoo:NAME`` would load for toy model ``name`` with ``settings`` (default:
    its recipe; ``quick`` for the quick one), built first when there are none."""
    entry = zoo_entry(name, quick)
    if settings is not None:
        entry = replace(entry, settings=settings)
    return ensure_built(entry).weights_path
