"""Helpers shared by the end-to-end tests: a small toy world written as on-disk datasets, and
the CLI run in-process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from xbt_bench.toy.world import ToyConfig, toy_split

SMALL_WORLD = ToyConfig(
    seed=3, n_pretrain=10, n_text=300, n_pairs=120, n_support=60, n_test=80, n_test_hard=10
)
# Tiny training so every registered method runs in seconds.
TINY = {"proj_steps": 20, "proj_batch": 64, "steps": 4, "batch": 16, "pairs": 60}
KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")


def write_folder_dataset(folder: Path, split: str, suffix: str = ".png") -> None:
    """A toy split as a plain folder: image files (PNG, or another ``suffix`` PIL writes) plus
    ``{split}.csv`` of image,caption rows."""
    data = toy_split(split, SMALL_WORLD)
    (folder / split).mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image_index in range(data.n_images):
            name = f"{split}/{image_index:04d}{suffix}"
            data.load_image(image_index).save(folder / name)
            for caption_index in np.flatnonzero(data.caption_image == image_index):
                writer.writerow([name, data.captions[caption_index]])


def run_cli(args: list[str]) -> int:
    from xbt_bench.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def tiny_settings() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
