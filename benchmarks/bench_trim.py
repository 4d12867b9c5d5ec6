"""Exact text-length trimming: text extraction with and without it, on the same captions.

    python benchmarks/bench_trim.py [--captions 8192] [--rounds 3]

Three ways to embed the same captions, batch 1024, one process, medians over rounds:

- ``full``: open_clip's text tower on every padded position, batches in input order (v0.1);
- ``trimmed``: each batch cut to its longest caption, batches in input order;
- ``sorted+trimmed``: what extraction does (blocks of 4 batches sorted by length, then trimmed).

Models: the shipped toy-s and toy-m on toy captions (24-token context), and a real-size
ViT-B-32 text tower (random weights, 77-token context) on captions with Flickr30k's length
profile (12.3 words on average, 5–40). The embeddings of all three agree (max |Δ| printed).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch
from open_clip.model import CLIP

from xbt_bench.embed.extract import iter_text_embeddings
from xbt_bench.models.trim import TrimmedTextCLIP, enable_text_trimming

WORDS = (
    "a man woman child dog two people group young old little girl boy in on at with the of "
    "red blue black white green wearing shirt hat jacket standing sitting walking running "
    "street park water beach grass field building front near holding playing ball bike "
    "smiling looking camera crowd table food their while another large small"
).split()


def flickr_like(n: int, seed: int = 0) -> list[str]:
    """Captions with Flickr30k's word-count profile (mean 12.3, sd 5.2, 5–40 words)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.normal(12.3, 5.2, n)), 5, 40).astype(int)
    return [" ".join(rng.choice(WORDS, size=k)) + "." for k in lengths]


def _time(fn) -> float:  # noqa: ANN001
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(model: torch.nn.Module, tokenizer, texts: list[str], rounds: int) -> dict[str, float]:  # noqa: ANN001
    """Median seconds of each way, and the largest embedding difference between them."""
    batch = 1024
    model.eval()
    tokens = [tokenizer(texts[i : i + batch]) for i in range(0, len(texts), batch)]

    def unsorted(trim: bool) -> np.ndarray:
        model.__class__ = TrimmedTextCLIP if trim else CLIP
        with torch.inference_mode():
            return np.concatenate([model.encode_text(t, normalize=True).numpy() for t in tokens])

    def extraction() -> np.ndarray:
        model.__class__ = TrimmedTextCLIP
        encoder = type("E", (), {})()  # what extraction needs of a model
        encoder.identity, encoder.preprocess, encoder.tokenizer = "bench", None, tokenizer
        encoder.encode_image, encoder.encode_text = model.encode_image, model.encode_text
        # Tokens from the token table (cached after the first round), as in a run.
        key = f"bench-trim-{len(texts)}-{hash(tuple(texts[:3]))}"
        blocks = iter_text_embeddings(encoder, texts, batch_size=batch, texts_key=key)
        return np.concatenate(list(blocks))

    ways = {"full": lambda: unsorted(False), "trimmed": lambda: unsorted(True),
            "sorted+trimmed": extraction}  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            seconds[name].append(_time(way))
    outputs = {name: way() for name, way in ways.items()}
    out = {name: statistics.median(values) for name, values in seconds.items()}
    out["max_diff"] = max(float(np.abs(outputs["full"] - o).max()) for o in outputs.values())
    out["eot_mean"] = float(torch.cat(tokens).argmax(-1).float().mean()) + 1
    out["context"] = tokens[0].shape[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import open_clip

    from xbt_bench.models.loading import load_model
    from xbt_bench.toy.world import toy_text_corpus

    toy_texts = list(toy_text_corpus().texts)[: args.captions]
    cases = []
    for name in ("toy-s", "toy-m"):
        loaded = load_model(f"zoo:{name}")
        cases.append((f"{name} (toy captions)", loaded.model, loaded.tokenizer, toy_texts))
    logging.disable(logging.WARNING)  # open_clip warns that the weights are random
    torch.manual_seed(0)
    vit = open_clip.create_model("ViT-B-32")
    logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert enable_text_trimming(vit, tokenizer(["a dog", "two dogs run on the grass"]))
    cases.append(("ViT-B-32 random (Flickr-like)", vit, tokenizer, flickr_like(args.captions)))
    print(f"{args.captions} captions, batch 1024, medians of {args.rounds} rounds (seconds)")
    print(f"{'model':<32}{'context':>8}{'mean EOT':>9}{'full':>8}{'trimmed':>9}"
          f"{'sorted+trim':>12}{'speed-up':>9}{'max |diff|':>11}")  # fmt: skip
    for label, model, tok, texts in cases:
        row = measure(model, tok, texts, args.rounds)
        print(
            f"{label:<32}{row['context']:>8}{row['eot_mean']:>9.1f}{row['full']:>8.2f}"
            f"{row['trimmed']:>9.2f}{row['sorted+trimmed']:>12.2f}"
            f"{row['full'] / row['sorted+trimmed']:>8.2f}x{row['max_diff']:>11.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
