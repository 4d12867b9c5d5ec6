"""Exact text-length trimming for CLIP text towers.

In open_clip's ``CLIP`` the text tower is causal (each position attends to itself and the
positions before it) and pools the end-of-text token (``text_pool_type == "argmax"``: the EOT
token has the highest id). So nothing after a caption's EOT influences its embedding, and a
batch can be cut to its longest caption (up to its last EOT) before the tower runs: the same
embeddings, with the padding's compute saved (toy captions use about 12 of 24 positions, real
ones about 20 of 77).

:func:`enable_text_trimming` switches a model to :class:`TrimmedTextCLIP` only when that holds:
the model is a plain ``CLIP`` whose ``encode_text`` is open_clip's, it pools by argmax, and its
attention mask is causal; it then checks on a sample batch that the trimmed and the full
tower agree, and keeps the model as it was otherwise. Training (the same ``encode_text``) and
extraction both use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool

# Largest difference allowed between trimmed and full embeddings in the self-check (float32
# matrix products of other shapes round differently in the last bits).
SELF_CHECK_TOLERANCE = 1e-4


class TrimmedTextCLIP(CLIP):
    """open_clip's CLIP whose text tower runs up to the batch's last end-of-text token."""

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        length = int(text.argmax(dim=-1).max()) + 1  # argmax pooling: EOT has the top id
        text = text[:, :length]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = text_global_pool(x, text, self.text_pool_type)
        if self.text_projection is not None:
            if isinstance(self.text_projection, torch.nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


def trimming_applies(model: torch.nn.Module) -> bool:
    """Whether trimming is exact for ``model``: a plain open_clip ``CLIP`` (its own
    ``encode_text``), argmax pooling, and a causal attention mask."""
    if type(model) is not CLIP or type(model).encode_text is not CLIP.encode_text:
        return False
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None:
        return False
    n = mask.shape[-1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    return mask.shape == (n, n) and torch.equal(mask.detach().cpu().float(), causal)


def enable_text_trimming(model: torch.nn.Module, sample: torch.Tensor) -> bool:
    """Switch ``model`` to trimmed text encoding when :func:`trimming_applies` and the trimmed
    tower matches the full one on ``sample`` (token ids, a few captions); returns whether it
    did. The model's weights and every other method are unchanged."""
    if not trimming_applies(model):
        return False
    was_training = model.training
    model.eval()
    with torch.no_grad():
        sample = sample.to(model.positional_embedding.device)
        full = model.encode_text(sample, normalize=True)
        model.__class__ = TrimmedTextCLIP
        trimmed = model.encode_text(sample, normalize=True)
    model.train(was_training)
    if float((full - trimmed).abs().max()) > SELF_CHECK_TOLERANCE:
        model.__class__ = CLIP
        return False
    return True
