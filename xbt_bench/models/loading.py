"""The one model loader: a model reference in, an eval-mode open_clip model out.

A reference is parsed (:mod:`.refs`) and its kind looked up in one table of weight sources
(:data:`weight_sources`: built-in tag, local file, hub repo, local folder, and the toy zoo, which
the toy world registers by name), each turning the reference into :class:`Weights`. Every kind
ends in the same ``open_clip.create_model_and_transforms`` call, so toy and real models share
every code path after this point; a new kind of reference is one entry in the table. An
``embeddings:DIR`` reference names a model known only by its stored embeddings: it loads as a
:class:`~xbt_bench.models.stored.StoredModel`, which the extraction layer serves from disk.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..atomic import sha256_of, write_json
from ..errors import NotFoundError, XbtError
from ..paths import home, zoo_models_dir
from ..registry import Registry
from .refs import ModelRef, parse_model_ref
from .stored import StoredModel

HUB_PROBE_SECONDS = 3.0
# Captions of different lengths on which trimmed and full text towers must agree.
TRIM_CHECK_CAPTIONS = ["a dog", "a small red circle above a large blue square on the left"]


@dataclass
class LoadedModel:
    """An open_clip model ready to embed, with what it needs around it."""

    ref: str
    model: torch.nn.Module = field(repr=False)
    preprocess: Callable[[Any], torch.Tensor] = field(repr=False)
    tokenizer: Callable[..., torch.Tensor] = field(repr=False)
    embed_dim: int
    identity: str
    weights_path: Path | None = None
    text_trimmed: bool = False  # text batches cut to their longest caption (exact; see .trim)

    @property
    def preprocess_signature(self) -> str:
        """A string that changes whenever the image transform changes (for cache keys)."""
        return repr(self.preprocess)

    @property
    def tokenizer_signature(self) -> str:
        """A string that changes whenever the tokenizer changes (for cache keys)."""
        context = getattr(self.tokenizer, "context_length", None)
        trim = ", trimmed" if self.text_trimmed else ""
        return f"{type(self.tokenizer).__name__}(context_length={context}{trim})"


def register_zoo_configs() -> None:
    """Make the model zoo's open_clip configs (``model_zoo/models/NAME.json``) known to
    open_clip, so ``NAME`` works in every kind of reference (``zoo:toy-s``, ``toy-s:/path``)."""
    import open_clip

    folder = zoo_models_dir()
    names = {path.stem for path in folder.glob("*.json") if path.stem.count(".") == 0}
    if folder.is_dir() and not names <= set(open_clip.list_models()):
        open_clip.add_model_config(folder)


@dataclass(frozen=True)
class Weights:
    """What a weight source resolves a reference to: the open_clip model name (or
    ``local-dir:PATH``), its weights file, and keyword options for
    ``open_clip.create_model_and_transforms``."""

    model_name: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, remembered per (path, size, mtime) so big files hash once."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = home() / "weights-sha256.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    index[key] = sha256_of(path)
    write_json(index_path, index)
    return index[key]


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` s (False when HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _hub_cached_file(repo_id: str, filenames: list[str]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str) and os.path.isfile(cached):
            return Path(cached)
    return None


def _missing_weights(ref: ModelRef, what: str, fetch_hint: str) -> XbtError:
    return XbtError(
        f"weights for {ref.text} are not available offline: {what}. "
        f"Pre-download them where there is internet ({fetch_hint}) and copy the Hugging Face "
        f"cache (~/.cache/huggingface/hub) here, or pass a local file: "
        f"{ref.name}:/path/to/weights.safetensors"
    )


def tag_weights(ref: ModelRef) -> Weights:
    """A built-in tag's weights file (from the local cache, or downloaded when online) and the
    preprocessing its pretrained config sets."""
    import open_clip
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if ref.name not in open_clip.list_models():
        raise NotFoundError(
            f"model {ref.name!r} (in {ref.text!r}) is not an open_clip model; "
            "see `python -c 'import open_clip; print(open_clip.list_models())'`"
        )
    cfg = open_clip.get_pretrained_cfg(ref.name, ref.source)
    if not cfg:
        tags = [tag for name, tag in open_clip.list_pretrained() if name == ref.name]
        raise NotFoundError(
            f"pretrained tag {ref.source!r} not known for {ref.name}; known tags: "
            f"{', '.join(tags) or '(none)'}"
        )
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" means the default file
        candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        cached = _hub_cached_file(repo_id, candidates)
        if cached is None:
            if not hub_reachable():
                raise _missing_weights(
                    ref,
                    f"no {' or '.join(candidates)} of hub repo {repo_id} in the local cache",
                    f"`hf download {repo_id}`",
                )
            cached = Path(open_clip.download_pretrained(cfg))
    else:
        url = cfg["url"]
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if not cached.is_file():
            if not hub_reachable():
                raise _missing_weights(ref, f"{cached} is missing", f"download {url}")
            cached = Path(open_clip.download_pretrained(cfg, prefer_hf_hub=False))
    options = {
        "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
        "image_mean": cfg.get("mean"),
        "image_std": cfg.get("std"),
        "image_interpolation": cfg.get("interpolation"),
        "image_resize_mode": cfg.get("resize_mode"),
    }
    return Weights(ref.name, cached, options)


def _resolve_hub_repo(ref: ModelRef) -> Path:
    """A local folder (the cache snapshot) holding an hf-hub repo's config and weights."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    config = _hub_cached_file(ref.source, ["open_clip_config.json"])
    weights = _hub_cached_file(ref.source, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
    if config is None or weights is None:
        if not hub_reachable():
            missing = "open_clip_config.json" if config is None else "the weights file"
            raise _missing_weights(
                ref, f"{missing} of hub repo {ref.source} is not in the local cache",
                f"`hf download {ref.source}`",
            )
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.source, allow_patterns=["open_clip_*"]))
    return config.parent


def _weights_in_dir(folder: Path) -> Path:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not found:
        raise NotFoundError(
            f"no weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin) "
            f"in {folder}"
        )
    return found[0]


def file_weights(ref: ModelRef) -> Weights:
    """An open_clip config ``NAME`` with a local weights file."""
    import open_clip

    weights = Path(ref.source).expanduser()
    if not weights.is_file():
        raise NotFoundError(f"weights file {weights} (in {ref.text!r}) does not exist")
    if ref.name not in open_clip.list_models():
        raise NotFoundError(
            f"model {ref.name!r} (in {ref.text!r}) is not an open_clip model config; use "
            "a name from open_clip.list_models() or local-dir:/path with its own config"
        )
    return Weights(ref.name, weights)


def folder_weights(ref: ModelRef, folder: Path) -> Weights:
    """A folder with ``open_clip_config.json`` and weights (open_clip's hub layout)."""
    if not (folder / "open_clip_config.json").is_file():
        raise NotFoundError(
            f"{ref.text!r}: {folder / 'open_clip_config.json'} does not exist; a local-dir "
            "needs open_clip_config.json and open_clip_model.safetensors"
        )
    return Weights(f"local-dir:{folder}", _weights_in_dir(folder))


def hub_weights(ref: ModelRef) -> Weights:
    """An open_clip repo of the Hugging Face hub (from the local cache, or downloaded)."""
    return folder_weights(ref, _resolve_hub_repo(ref))


def local_dir_weights(ref: ModelRef) -> Weights:
    """A local folder in open_clip's hub layout."""
    return folder_weights(ref, Path(ref.source).expanduser())


# Kinds of reference (refs.parse_model_ref) -> what resolves them to weights; "module:attr"
# entries are imported on first use.
weight_sources: Registry[Callable[[ModelRef], Weights]] = Registry("model reference kind")
weight_sources.register("tag", tag_weights)
weight_sources.register("file", file_weights)
weight_sources.register("hf-hub", hub_weights)
weight_sources.register("local-dir", local_dir_weights)
weight_sources.register("zoo", "xbt_bench.toy.zoo:zoo_weights")


def load_model(ref: str, device: str | torch.device = "cpu") -> LoadedModel | StoredModel:
    """Load the model named by ``ref`` (see :mod:`xbt_bench.models.refs`) in eval mode; an
    ``embeddings:DIR`` reference opens (and verifies) the stored embeddings instead.

    Offline, a reference whose weights are not cached fails within seconds with a message
    saying which file is missing and how to provide it.
    """
    import open_clip

    parsed = parse_model_ref(ref)
    if parsed.kind == "embeddings":
        return StoredModel.open(ref)
    register_zoo_configs()
    resolved = weight_sources.get(parsed.kind)(parsed)
    model_name, weights = resolved.model_name, resolved.path
    pretrained = None if model_name.startswith("local-dir:") else str(weights)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, weights_only=True, **resolved.options
        )
    except (RuntimeError, ValueError, OSError) as error:
        raise XbtError(f"could not load {ref!r} from {weights}: {error}") from error
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    from .trim import enable_text_trimming

    trimmed = enable_text_trimming(model, tokenizer(TRIM_CHECK_CAPTIONS))
    embed_dim = _embed_dim(model)
    identity = f"{parsed.name}@{weights_sha256(weights)[:16]}"
    return LoadedModel(
        ref=ref,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        identity=identity,
        weights_path=weights,
        text_trimmed=trimmed,
    )


def _embed_dim(model: torch.nn.Module) -> int:
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    if dim is None:
        text_projection = getattr(model, "text_projection", None)
        dim = text_projection.shape[-1]
    return int(dim)
