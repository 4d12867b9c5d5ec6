"""Model references: the strings pair files and the CLI use to name a model.

- ``NAME:TAG``: an open_clip model with a built-in pretrained tag (``ViT-B-32:openai``)
- ``NAME:/path/to/weights.{pt,pth,bin,safetensors}``: an open_clip model with local weights
- ``hf-hub:org/repo``: an open_clip model on the Hugging Face hub (config and weights)
- ``local-dir:/path``: a folder with ``open_clip_config.json`` and weights
- ``zoo:NAME``: a toy model of the model zoo (its shipped weights, see :mod:`.toy_models`)
- ``embeddings:DIR``: a model known only by its stored embeddings (a folder of split folders,
  docs/embeddings-format.md; see :mod:`.stored`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
SYNTAX_HELP = (
    "use NAME:TAG (e.g. ViT-B-32:openai), NAME:/path/to/weights.safetensors, "
    "hf-hub:org/repo, local-dir:/path, zoo:NAME or embeddings:DIR"
)


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference (``kind`` is tag, file, hf-hub, local-dir, zoo or embeddings)."""

    text: str
    kind: str
    name: str
    source: str

    def __str__(self) -> str:
        return self.text


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``text`` into a :class:`ModelRef`; ConfigError with the accepted syntax if bad."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"model reference {text!r} is not valid; {SYNTAX_HELP}")
    head, rest = text.split(":", 1)
    if not head or not rest:
        raise ConfigError(f"model reference {text!r} is not valid; {SYNTAX_HELP}")
    if head == "hf-hub":
        if rest.count("/") != 1 or rest.startswith("/") or rest.endswith("/"):
            raise ConfigError(f"model reference {text!r}: hf-hub needs org/repo; {SYNTAX_HELP}")
        return ModelRef(text, "hf-hub", rest, rest)
    if head == "local-dir":
        return ModelRef(text, "local-dir", Path(rest).name, rest)
    if head == "zoo":
        return ModelRef(text, "zoo", rest, rest)
    if head == "embeddings":
        return ModelRef(text, "embeddings", Path(rest).name, rest)
    looks_like_path = "/" in rest or "\\" in rest or rest.lower().endswith(WEIGHT_SUFFIXES)
    if looks_like_path:
        if not rest.lower().endswith(WEIGHT_SUFFIXES):
            raise ConfigError(
                f"model reference {text!r}: weights file must end in "
                f"{', '.join(WEIGHT_SUFFIXES)}; {SYNTAX_HELP}"
            )
        return ModelRef(text, "file", head, rest)
    return ModelRef(text, "tag", head, rest)
