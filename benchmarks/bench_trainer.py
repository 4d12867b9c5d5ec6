"""Trainer overhead: the shared training loop against a bare PyTorch loop, same steps.

    python benchmarks/bench_trainer.py [--pair toy-s-to-m] [--rounds 3]

For stage 1 (ψ on text), ``xbt``'s stage 2 and ``finetune``'s stage 2 of the pair's default
recipe, both loops run the same forward, backward, gradient clipping and AdamW step from the
same initial weights; the bare loop gets its batches assembled beforehand and does nothing
else, the trainer does everything it does in a run: batch assembly, progress, loss logging,
checkpoints (one every ``checkpoint_every`` steps, as configured: each timed run is exactly that
many steps, so it writes the share of checkpoints a full run writes). Rounds alternate the two
loops; the table gives medians of seconds per step and the overhead (trainer / bare − 1).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from xbt_bench.data import load_dataset, load_text_corpus, split_data_ref
from xbt_bench.methods import FitContext, ModelHandle, methods
from xbt_bench.methods.stage1 import prepare_stage1, pretrain_projection
from xbt_bench.methods.stage2 import prepare_stage2
from xbt_bench.pairs import load_pair
from xbt_bench.paths import cache_dir
from xbt_bench.train import TrainConfig, train
from xbt_bench.train.loop import _Optimisation


def bare_loop(
    module: torch.nn.Module,
    loss_fn: Any,
    batches: list[Any],
    config: TrainConfig,
    param_groups: Any,
) -> float:
    """Seconds per step of forward, backward, clipping and AdamW on prepared batches."""
    optimisation = _Optimisation.create(module, param_groups, config, torch.device("cpu"))
    module.train()
    started = time.perf_counter()
    for batch in batches:
        optimisation.step(loss_fn(batch)["loss"])
    return (time.perf_counter() - started) / len(batches)


def trainer_loop(
    module: torch.nn.Module,
    loss_fn: Any,
    batch_at: Any,
    config: TrainConfig,
    param_groups: Any,
) -> float:
    """Seconds per step of :func:`xbt_bench.train.train` (a fresh run into a temporary folder)."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        train(module, loss_fn, batch_at, config, Path(folder), desc="benchmark",
              param_groups=param_groups)  # fmt: skip
        return (time.perf_counter() - started) / config.steps


def measure(setups: dict[str, dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for name, setup in setups.items():
        config: TrainConfig = setup["config"]
        batches = [setup["batch_at"](step) for step in range(config.steps)]
        module, loss_fn, groups = setup["module"], setup["loss_fn"], setup["groups"]
        start = copy.deepcopy(module.state_dict())
        bare, ours = [], []
        for _ in range(rounds):
            module.load_state_dict(start)  # the same start for both loops
            bare.append(bare_loop(module, loss_fn, batches, config, groups))
            module.load_state_dict(start)
            ours.append(trainer_loop(module, loss_fn, setup["batch_at"], config, groups))
        b, t = statistics.median(bare), statistics.median(ours)
        rows.append(
            {
                "stage": name,
                "steps": config.steps,
                "checkpoint_every": config.checkpoint_every,
                "bare_ms": round(1000 * b, 2),
                "trainer_ms": round(1000 * t, 2),
                "overhead_pct": round(100 * (t / b - 1), 1),
            }
        )
    return rows


def stage_setups(pair_name: str, stage1_steps: int) -> dict[str, dict[str, Any]]:
    """The three stages' modules, losses and batches, built as the methods build them."""
    pair = load_pair(pair_name)
    old, new = ModelHandle(pair.old), ModelHandle(pair.new)
    common = dict(
        old=old,
        new=new,
        text_corpus=load_text_corpus(pair.data.text),
        train_pairs=load_dataset(*split_data_ref(pair.data.pairs)),
        support=load_dataset(*split_data_ref(pair.data.support)),
        work_dir=cache_dir("runs", pair.name),
    )
    setups: dict[str, dict[str, Any]] = {}
    cfg1 = methods.get("xbt-proj").parse_settings({})
    stage1 = prepare_stage1(FitContext(**common), cfg1)
    config1 = replace(stage1.train_config, steps=stage1_steps, checkpoint_every=stage1_steps)
    setups["stage 1 (ψ)"] = {
        "module": stage1.psi,
        "config": config1,
        "batch_at": stage1.batch_at,
        "loss_fn": stage1.loss_fn,
        "groups": None,
    }
    for method in ("xbt", "finetune"):
        ctx = FitContext(**common, shared={})
        cfg = methods.get(method).parse_settings({})
        psi0 = pretrain_projection(ctx, cfg)  # cached after the first run of the pair
        setup = prepare_stage2(ctx, method, cfg, psi0)
        config = replace(setup.train_config, steps=setup.train_config.checkpoint_every)
        setups[f"{method} stage 2"] = {
            "module": setup.encoder,
            "config": config,
            "batch_at": setup.batch_at,
            "loss_fn": setup.loss_fn,
            "groups": setup.param_groups,
        }
    return setups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="toy-s-to-m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stage1-steps", type=int, default=400)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = measure(stage_setups(args.pair, args.stage1_steps), args.rounds)
    table = Table(title=f"Trainer overhead on {args.pair} (medians of {args.rounds} rounds)")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=160).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
