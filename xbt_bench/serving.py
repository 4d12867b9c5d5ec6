"""A method's query encoder for a serving system: one safetensors file, written by
``xbt-bench export`` (:func:`write_query_encoder`) and read by :func:`load_query_encoder`.

The file holds the tensors of a :class:`~xbt_bench.methods.base.QueryEncoderSpec` (a NEW→OLD
matrix, ψ's state, LoRA adapters or NEW's fine-tuned weights) and, in the safetensors metadata
under ``xbt_bench``, a JSON manifest: format and version, pair, method and seed, OLD's and NEW's
references and weight fingerprints, how each side's query is computed (``maps``, ``alpha``,
``psi``, ``adapters``, ``dim``), the method's settings, its support scores and the test metrics
of the result it came from. Any safetensors reader opens it
(``safetensors.safe_open(path, "np").metadata()["xbt_bench"]``); this module needs open_clip,
peft (for LoRA) and the model loader, not the training code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import write_with
from .embed.extract import embed_texts
from .errors import ConfigError, InputError, NotFoundError, XbtError
from .methods.base import QueryEncoderSpec, Side
from .methods.closed_form import slerp
from .models.loading import LoadedModel, load_model
from .models.lora import add_lora, lora_parameters
from .models.projection import Projection
from .models.refs import parse_model_ref

FORMAT = "xbt-bench query encoder"
VERSION = 1
METADATA_KEY = "xbt_bench"
IMAGE_BATCH = 256
MAP_BATCH = 8192


def write_query_encoder(path: str | Path, spec: QueryEncoderSpec, manifest: dict[str, Any]) -> Path:
    """``spec``'s tensors and ``manifest`` (plus the spec's structure, the format and its
    version) as one safetensors file at ``path``, written atomically."""
    from safetensors.numpy import save_file

    header = {
        "format": FORMAT,
        "version": VERSION,
        **manifest,
        "maps": {side: list(mapping) for side, mapping in spec.maps.items()},
        "alpha": dict(spec.alpha),
        "psi": spec.psi,
        "adapters": spec.adapters,
    }
    tensors = {name: np.ascontiguousarray(array) for name, array in spec.tensors.items()}
    metadata = {METADATA_KEY: json.dumps(header)}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return Path(path)


def _weights_hash(fingerprint: str) -> str:
    """The weights part of a model identity (``NAME@HASH`` -> ``HASH``)."""
    return fingerprint.rsplit("@", 1)[-1]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class QueryEncoder:
    """An exported query encoder: queries in, L2-normalised float32 rows in OLD's space out
    (``dim`` columns), as the method computed them when its result was scored.

    ``encode_text`` and ``encode_image`` run NEW (with the method's adapters; OLD too for a
    method that keeps OLD at query time, ``needs_old``), loaded on first use.
    ``map_new_embeddings`` maps NEW's embeddings a serving stack already computed (methods that
    do not change NEW's weights), e.g. on a pair of stored embeddings.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        tensors: dict[str, np.ndarray],
        refs: dict[str, str],
        device: str = "cpu",
        verify: bool = True,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.method: str = manifest["method"]
        self.dim: int = int(manifest["dim"])
        self.refs = refs
        self.device = device
        self.verify = verify
        self.maps: dict[str, tuple[str, str]] = {s: tuple(m) for s, m in manifest["maps"].items()}
        self.alpha: dict[str, float] = {s: float(a) for s, a in manifest["alpha"].items()}
        self.adapters: dict[str, Any] | None = manifest["adapters"]
        self._tensors = tensors
        self._psi: dict[str, Projection] = {}
        for name, shape in manifest["psi"].items():
            psi = Projection(**shape)
            prefix = f"{name}."
            state = {k[len(prefix) :]: torch.from_numpy(v) for k, v in tensors.items()
                     if k.startswith(prefix)}  # fmt: skip
            psi.load_state_dict(state)
            self._psi[name] = psi.eval()
        self._networks: dict[str, LoadedModel] = {}

    @property
    def needs_old(self) -> bool:
        """Whether a query also needs OLD's own embedding of it (OLD at query time)."""
        return bool(self.alpha)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Caption queries [len(texts), dim] in OLD's space."""
        return self._queries("text", lambda model: embed_texts(model, list(texts)))

    def encode_image(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Image queries (PIL images) [len(images), dim] in OLD's space."""
        return self._queries("image", lambda model: self._embed_images(model, images))

    def map_new_embeddings(
        self, new: np.ndarray, side: Side = "text", old: np.ndarray | None = None
    ) -> np.ndarray:
        """Queries from NEW's embeddings ``new`` [n, d_new] of ``side`` (image or text) queries,
        computed by your own NEW; ``old``: OLD's embeddings of the same queries, for a method
        that keeps OLD at query time. InputError for a method that changes NEW's weights
        (LoRA, fine-tuning: use encode_text / encode_image) or for malformed arrays."""
        if self.adapters is not None:
            raise XbtError(
                f"{self.method}'s encoder runs NEW with its own {self.adapters['kind']} weights, "
                "so NEW's plain embeddings cannot be mapped; embed the queries with encode_text "
                "or encode_image"
            )
        if side not in self.maps:
            raise InputError(f"side {side!r} is not one of {', '.join(self.maps)}")
        if side in self.alpha and old is None:
            raise InputError(
                f"{self.method} interpolates with OLD's own query: pass old=OLD's embeddings of "
                "the same queries"
            )
        new = self._checked("new", new, self._in_dim(side))
        old = None if old is None else self._checked("old", old, self.dim, rows=len(new))
        return self._map(new, side, old)

    def _in_dim(self, side: str) -> int:
        kind, name = self.maps[side]
        return self._psi[name].in_dim if kind == "psi" else self._tensors[name].shape[0]

    @staticmethod
    def _checked(what: str, x: np.ndarray, dim: int, rows: int | None = None) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != dim:
            raise InputError(f"{what} embeddings have shape {x.shape}; expected [n, {dim}]")
        if rows is not None and len(x) != rows:
            raise InputError(f"{what} embeddings have {len(x)} rows; the NEW ones have {rows}")
        if not np.isfinite(x).all():
            raise InputError(f"{what} embeddings hold NaN or inf values")
        return _unit(x)

    def _queries(self, side: str, embed: Callable[[LoadedModel], np.ndarray]) -> np.ndarray:
        new = embed(self._network("new"))
        old = embed(self._network("old")) if side in self.alpha else None
        return self._map(new, side, old)

    def _map(self, new: np.ndarray, side: str, old: np.ndarray | None) -> np.ndarray:
        """NEW's unit rows through the side's map (then SLERP from OLD's query), cut to ``dim``
        columns and normalised (:class:`~xbt_bench.methods.base.QueryEncoderSpec`)."""
        kind, name = self.maps[side]
        if kind == "matrix":
            mapped = new @ self._tensors[name]
        else:
            with torch.inference_mode():
                mapped = np.concatenate([
                    self._psi[name](torch.from_numpy(new[start : start + MAP_BATCH])).numpy()
                    for start in range(0, len(new), MAP_BATCH)
                ])  # fmt: skip
        if side in self.alpha:
            padded = np.pad(old, ((0, 0), (0, mapped.shape[1] - old.shape[1])))
            mapped = slerp(padded, mapped, self.alpha[side])
        return _unit(mapped[:, : self.dim])

    def _network(self, which: str) -> LoadedModel:
        """OLD or NEW loaded (once), its weights checked against the encoder's fingerprint, and
        NEW with the method's adapters or weights."""
        if which in self._networks:
            return self._networks[which]
        ref = self.refs[which]
        if parse_model_ref(ref).kind == "embeddings":
            raise XbtError(
                f"this encoder's {which.upper()} is known only by its stored embeddings ({ref}); "
                f"pass {which}='MODEL' (the model with fingerprint "
                f"{self.manifest['fingerprints'][which]!r}) to load_query_encoder, or map your "
                "NEW's embeddings of the queries with map_new_embeddings"
            )
        model = load_model(ref, self.device)
        expected = self.manifest["fingerprints"][which]
        if self.verify and _weights_hash(model.identity) != _weights_hash(expected):
            raise XbtError(
                f"{ref} has weights {model.identity!r}, but the encoder was fitted with "
                f"{expected!r}; pass the right {which}= model (or verify=False to skip the check)"
            )
        if which == "new" and self.adapters is not None:
            self._apply_adapters(model)
        self._networks[which] = model
        return model

    def _apply_adapters(self, model: LoadedModel) -> None:
        kind = self.adapters["kind"]
        prefix = "adapters." if kind == "lora" else "new."
        state = {k[len(prefix) :]: torch.from_numpy(v) for k, v in self._tensors.items()
                 if k.startswith(prefix)}  # fmt: skip
        if kind == "lora":
            lora = self.adapters
            add_lora(model.model, lora["towers"], int(lora["rank"]), float(lora["alpha"]))
            missing = sorted(set(lora_parameters(model.model)) - set(state))
            if missing:
                raise ConfigError(f"{self.path} lacks LoRA tensors {missing[:3]}; export it again")
        try:
            loaded = model.model.load_state_dict(state, strict=kind == "weights")
        except RuntimeError as error:
            first = str(error).splitlines()[1:2] or [str(error)]
            raise ConfigError(f"{self.path} does not fit {model.ref}: {first[0].strip()}") from None
        if loaded.unexpected_keys:
            raise ConfigError(
                f"{self.path}: tensors {loaded.unexpected_keys[:3]} fit no layer of {model.ref}"
            )
        model.model.requires_grad_(False).eval()

    def _embed_images(self, model: LoadedModel, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        model.model.eval()
        for start in range(0, len(images), IMAGE_BATCH):
            pixels = torch.stack(
                [model.preprocess(im) for im in images[start : start + IMAGE_BATCH]]
            )
            with torch.inference_mode():
                embedded = model.model.encode_image(pixels.to(self.device))
            out.append(F.normalize(embedded.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)


def load_query_encoder(
    path: str | Path,
    *,
    old: str | None = None,
    new: str | None = None,
    device: str = "cpu",
    verify: bool = True,
) -> QueryEncoder:
    """The query encoder ``xbt-bench export`` wrote to ``path``. ``old``/``new`` replace the
    model references it records (e.g. where your weights live); with ``verify`` their weights
    must have the fingerprints the encoder was fitted with. One-line errors for a file that is
    missing, not an export or of another version."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"query encoder {path} does not exist; write it with xbt-bench export")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{path} is not a safetensors file ({error}); export it again") from None
    if METADATA_KEY not in metadata:
        raise ConfigError(
            f"{path} is not an xbt-bench query encoder (no {METADATA_KEY!r} metadata)"
        )
    manifest = json.loads(metadata[METADATA_KEY])
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(
            f"{path} is {manifest.get('format')!r} version {manifest.get('version')!r}; this "
            f"xbt-bench reads {FORMAT!r} version {VERSION}"
        )
    refs = {"old": old or manifest["old"], "new": new or manifest["new"]}
    return QueryEncoder(path, manifest, tensors, refs, device, verify)
