"""Calibrate the toy world: do toy OLD→NEW pairs behave like real CLIP upgrades on `support`?

    python benchmarks/toy_calibration.py                      # the zoo's configs as they are
    python benchmarks/toy_calibration.py CANDIDATE.json ...   # candidate recipes, one row each
    python benchmarks/toy_calibration.py C.json --pairs toy-s:toy-m --out rows.jsonl

A candidate is a JSON file that overrides the zoo's configs (``model_zoo/models``)::

    {"name": "a01", "note": "what is tried and why",
     "all":    {"train": {"temperature": 0.02, "data": {"n_pretrain": 20000}}},
     "models": {"toy-s": {"model": {"vision_cfg": {"layers": 2}}, "train": {"steps": 300}}}}

``all`` applies to every model, then ``models.NAME``; dicts merge key by key. Each model is
built with the zoo's own ``build`` (cached by its content hash under ``$XBT_BENCH_HOME/zoo``),
its embeddings of the ``support`` split and of the text corpus are cached beside, and each pair
gets one row: old→old, new→new, Procrustes→old (fitted on the text corpus) and SLERP→old
(SLERP-BC protocol: α per direction by R@1 on one half of ``support``, scored on the other
half, both ways), with the pair diagnostics (``xbt_bench.eval.diagnostics``) and the targets
of issue 13 marked pass/fail. Only ``support`` is looked at: decisions are never made on
``test``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbt_bench.embed.tokens import token_table
from xbt_bench.eval import Embeddings
from xbt_bench.eval.retrieval import RECALL_KEYS, evaluate_retrieval
from xbt_bench.linalg import procrustes_map
from xbt_bench.methods.closed_form import slerp
from xbt_bench.models.loading import load_model
from xbt_bench.paths import cache_dir, zoo_models_dir
from xbt_bench.scoring import pair_diagnostics
from xbt_bench.toy import build as toy_build
from xbt_bench.toy.world import GENERATOR_VERSION, ToyConfig, toy_split, toy_text_corpus
from xbt_bench.toy.zoo import (
    CARD_NAME,
    TRAIN_SUFFIX,
    ZooEntry,
    ZooSettings,
)

SPLIT = "support"
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_PAIRS = ("toy-s:toy-m", "toy-m:toy-l")


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, dict values key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def candidate_entry(name: str, candidate: dict[str, Any]) -> ZooEntry:
    """Toy model ``name`` as the zoo configures it, with the candidate's overrides."""
    model = json.loads((zoo_models_dir() / f"{name}.json").read_text())
    train = json.loads((zoo_models_dir() / f"{name}{TRAIN_SUFFIX}").read_text())
    for part in (candidate.get("all", {}), candidate.get("models", {}).get(name, {})):
        model = merged(model, part.get("model", {}))
        train = merged(train, part.get("train", {}))
    data = ToyConfig(**train.pop("data", {}))
    return ZooEntry(name, model, ZooSettings(**train, data=data))


def built_card(entry: ZooEntry) -> dict[str, Any]:
    """The entry's card (building it first if needed): only its build facts are read."""
    if entry.is_built:
        card = json.loads((entry.folder / CARD_NAME).read_text())
    else:
        print(f"  building {entry.folder.name} ...", flush=True)
        card = toy_build.build(entry)
    return {
        "folder": entry.folder.name,
        "parameters": card["parameters"],
        "build_time_s": card["build_time_s"],
        "temperature_final": card["temperature_final"],
    }


@torch.no_grad()
def embeddings(entry: ZooEntry) -> dict[str, np.ndarray]:
    """Support images and captions, and the text corpus, embedded by ``entry`` (cached)."""
    folder = cache_dir("calibration", entry.folder.name)
    names = ("images", "texts", "corpus")
    if all((folder / f"{n}.npy").is_file() for n in names):
        return {n: np.load(folder / f"{n}.npy") for n in names}
    loaded = load_model(f"local-dir:{entry.folder}")
    (images, texts), _ = toy_build.embed_toy_split(
        loaded.model, loaded.tokenizer, SPLIT, entry.settings.data
    )
    corpus = toy_text_corpus(entry.settings.data)
    tokens = torch.from_numpy(
        np.array(token_table(loaded.tokenizer, corpus.texts, corpus.fingerprint))
    )
    corpus_emb = torch.cat(
        [
            loaded.model.encode_text(tokens[i : i + 2048].long(), True)
            for i in range(0, len(tokens), 2048)
        ]
    ).numpy()
    out = {"images": images, "texts": texts, "corpus": corpus_emb}
    for name, array in out.items():
        np.save(folder / f"{name}.npy", array)
    return out


def retrieval(
    t_q: np.ndarray, i_g: np.ndarray, i_q: np.ndarray, t_g: np.ndarray, caption_image: np.ndarray
) -> dict[str, float]:
    return evaluate_retrieval(
        text_queries=t_q,
        image_gallery=i_g,
        image_queries=i_q,
        text_gallery=t_g,
        caption_image=caption_image,
    ).metrics


def slerp_halves(old: dict, new_mapped: dict, caption_image: np.ndarray) -> dict[str, Any]:
    """SLERP-BC: α per direction by R@1 on one half of the images, scored on the other half."""
    n_images = int(caption_image.max()) + 1
    halves = (np.arange(n_images) < n_images // 2, np.arange(n_images) >= n_images // 2)

    def half(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.flatnonzero(mask)
        captions = np.flatnonzero(mask[caption_image])
        remap = np.full(n_images, -1)
        remap[images] = np.arange(len(images))
        return images, captions, remap[caption_image[captions]]

    def scores(mask: np.ndarray, a_t2i: float, a_i2t: float) -> dict[str, float]:
        images, captions, ci = half(mask)
        return retrieval(
            slerp(old["texts"][captions], new_mapped["texts"][captions], a_t2i),
            old["images"][images],
            slerp(old["images"][images], new_mapped["images"][images], a_i2t),
            old["texts"][captions],
            ci,
        )

    out: dict[str, Any] = {}
    for label, choose, score in (("AB", *halves), ("BA", *halves[::-1])):
        grid = {a: scores(choose, a, a) for a in ALPHAS}
        a_t2i = max(ALPHAS, key=lambda a: (grid[a]["t2i_r1"], -a))
        a_i2t = max(ALPHAS, key=lambda a: (grid[a]["i2t_r1"], -a))
        method = scores(score, a_t2i, a_i2t)
        base = scores(score, 0.0, 0.0)
        out[label] = {
            "alpha_t2i": a_t2i,
            "alpha_i2t": a_i2t,
            "slerp": method,
            "old": base,
            "cells": sum(method[k] > base[k] for k in RECALL_KEYS),
        }
    return out


def pair_row(old_entry: ZooEntry, new_entry: ZooEntry) -> dict[str, Any]:
    """All baselines, diagnostics and targets of one pair on ``support``."""
    caption_image = toy_split(SPLIT, old_entry.settings.data).caption_image
    old, new = embeddings(old_entry), embeddings(new_entry)
    weight = procrustes_map(new["corpus"], old["corpus"])
    mapped = {k: new[k] @ weight for k in ("images", "texts")}
    old_old = retrieval(old["texts"], old["images"], old["images"], old["texts"], caption_image)
    new_new = retrieval(new["texts"], new["images"], new["images"], new["texts"], caption_image)
    proc = retrieval(mapped["texts"], old["images"], mapped["images"], old["texts"], caption_image)
    diag = pair_diagnostics(
        Embeddings(old["images"], old["texts"]),
        Embeddings(new["images"], new["texts"]),
        caption_image,
        fit_texts_old=old["corpus"],
        fit_texts_new=new["corpus"],
    ).model_dump()
    halves = slerp_halves(old, mapped, caption_image)
    gap_pct = 100 * (new_new["rsum"] - old_old["rsum"]) / old_old["rsum"]
    targets = {
        "procrustes_within_3": all(abs(proc[k] - old_old[k]) <= 3 for k in ("t2i_r1", "i2t_r1")),
        "slerp_5_of_6": min(h["cells"] for h in halves.values()) >= 5,
        "rsum_gap_5_25": 5 <= gap_pct <= 25,
        "modality_gap_0.3": min(diag["old"]["modality_gap"], diag["new"]["modality_gap"]) >= 0.3,
        "old_r1_20_60": all(20 <= old_old[k] <= 60 for k in ("t2i_r1", "i2t_r1")),
    }
    return {
        "pair": f"{old_entry.name}->{new_entry.name}",
        "old_old": old_old,
        "new_new": new_new,
        "procrustes": proc,
        "slerp": halves,
        "rsum_gap_percent": gap_pct,
        "diagnostics": diag,
        "targets": targets,
        "passed": sum(targets.values()),
    }


def fmt(metrics: dict[str, float], keys: tuple[str, ...] = RECALL_KEYS) -> str:
    return " ".join(f"{metrics[k]:5.1f}" for k in keys)


def print_row(row: dict[str, Any]) -> None:
    d, p = row["diagnostics"], row["diagnostics"]["procrustes"]
    print(
        f"  {row['pair']}   [T2I R1/5/10  I2T R1/5/10]   targets {row['passed']}/5 "
        + " ".join(f"{k}={'ok' if v else 'NO'}" for k, v in row["targets"].items())
    )
    for label in ("old_old", "new_new", "procrustes"):
        extra = f"   rsum {row[label]['rsum']:6.1f}"
        if label != "old_old":
            extra += (
                f"  dR1 T {row[label]['t2i_r1'] - row['old_old']['t2i_r1']:+5.1f}"
                f" I {row[label]['i2t_r1'] - row['old_old']['i2t_r1']:+5.1f}"
            )
        print(f"    {label:10s} {fmt(row[label])}{extra}")
    for label, h in row["slerp"].items():
        print(
            f"    slerp {label}   {fmt(h['slerp'])}   vs old {fmt(h['old'])}  "
            f"a_t2i={h['alpha_t2i']} a_i2t={h['alpha_i2t']}  cells {h['cells']}/6"
        )
    print(
        f"    rsum gap {row['rsum_gap_percent']:+.1f}%  gap old {d['old']['modality_gap']:.3f}"
        f" new {d['new']['modality_gap']:.3f}  matched cos {d['old']['matched_cosine']:.3f}/"
        f"{d['new']['matched_cosine']:.3f}  CKA txt {d['cka_texts']:.3f} img {d['cka_images']:.3f}"
        f"  procrustes R2 txt {p['r2_texts']:.3f} img {p['r2_images']:.3f}"
        f" (linear txt {p['linear_r2_texts']:.3f})",
        flush=True,
    )


def markdown(rows_file: Path) -> str:
    """One Markdown table line per recorded row (the experiment log of docs/toy-world.md)."""
    lines = [
        "| attempt | pair | old→old T/I R@1 | new→new T/I | Procrustes T/I (Δ) | SLERP cells AB/BA "
        "| rsum gap | mod. gap old/new | CKA txt/img | Procr. R² txt/img (lin. txt) | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in rows_file.read_text().splitlines():
        row = json.loads(line)
        o, n, p = row["old_old"], row["new_new"], row["procrustes"]
        d, fit = row["diagnostics"], row["diagnostics"]["procrustes"]
        lines.append(
            f"| {row['candidate']['name']} | {row['pair']} "
            f"| {o['t2i_r1']:.1f} / {o['i2t_r1']:.1f} | {n['t2i_r1']:.1f} / {n['i2t_r1']:.1f} "
            f"| {p['t2i_r1']:.1f} / {p['i2t_r1']:.1f} ({p['t2i_r1'] - o['t2i_r1']:+.1f} / "
            f"{p['i2t_r1'] - o['i2t_r1']:+.1f}) "
            f"| {row['slerp']['AB']['cells']} / {row['slerp']['BA']['cells']} "
            f"| {row['rsum_gap_percent']:+.1f}% "
            f"| {d['old']['modality_gap']:.2f} / {d['new']['modality_gap']:.2f} "
            f"| {d['cka_texts']:.2f} / {d['cka_images']:.2f} "
            f"| {fit['r2_texts']:.2f} / {fit['r2_images']:.2f} ({fit['linear_r2_texts']:.2f}) "
            f"| {row['passed']}/5 |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", type=Path, help="candidate JSON files")
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="OLD:NEW,...")
    parser.add_argument("--out", type=Path, help="append one JSON line per pair here")
    parser.add_argument("--markdown", type=Path, help="print the rows of this --out file, stop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    torch.set_num_threads(args.threads)
    candidates = [json.loads(p.read_text()) | {"file": str(p)} for p in args.candidates]
    for candidate in candidates or [{"name": "zoo", "file": None}]:
        print(f"== {candidate['name']}: {candidate.get('note', '')}", flush=True)
        pairs = [p.split(":") for p in args.pairs.split(",")]
        entries = {n: candidate_entry(n, candidate) for pair in pairs for n in pair}
        builds = {}
        for name, entry in entries.items():
            started = time.perf_counter()
            builds[name] = built_card(entry)
            print(
                f"  {name}: {builds[name]['folder']} {builds[name]['parameters'] / 1e6:.2f}M params"
                f" build {builds[name]['build_time_s']:.0f}s tau_final "
                f"{builds[name]['temperature_final']}  ({time.perf_counter() - started:.0f}s now)",
                flush=True,
            )
        for old_name, new_name in pairs:
            if entries[old_name].settings.data != entries[new_name].settings.data:
                sys.exit(f"{old_name} and {new_name} are trained on different toy worlds")
            row = pair_row(entries[old_name], entries[new_name])
            print_row(row)
            if args.out:
                record = {
                    "candidate": candidate,
                    "builds": {n: builds[n] for n in (old_name, new_name)},
                    "data": asdict(entries[old_name].settings.data),
                    **row,
                    "generator_version": GENERATOR_VERSION,
                    "home": os.environ.get("XBT_BENCH_HOME", ""),
                }
                with args.out.open("a") as f:
                    f.write(json.dumps(record, default=float) + "\n")


if __name__ == "__main__":
    main()
