"""Stage-2 step time of ``xbt`` vs ``distill`` (OLD in the loop) vs ``finetune``, in one run.

Builds each method's stage 2 on a pair (default ``toy-s-to-m``) exactly as ``fit`` does (same
stage-1 ψ₀ from the shared checkpoint folder, same batches, same loss), then times whole
optimisation steps — batch assembly, forward, backward, AdamW step — interleaving the methods
step by step so that load changes on the machine hit all of them alike. Reports the median step
time, its ratio to ``xbt``'s, and each method's trainable parameters (in stage 2, and in all
including ψ, trained in stage 1) and their share of NEW's.

    PYTHONPATH=. python benchmarks/bench_methods.py                 # toy-s-to-m, 30 steps
    PYTHONPATH=. python benchmarks/bench_methods.py --steps 5 --set proj_steps=50   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from xbt_bench.data import load_dataset, load_text_corpus, split_data_ref
from xbt_bench.methods import FitContext, ModelHandle, methods
from xbt_bench.methods.stage1 import pretrain_projection
from xbt_bench.methods.stage2 import Stage2Setup, prepare_stage2
from xbt_bench.models.lora import count_parameters
from xbt_bench.pairs import load_pair
from xbt_bench.paths import cache_dir
from xbt_bench.sweep import sweepable_methods


def _optimizer(setup: Stage2Setup) -> torch.optim.Optimizer:
    groups = []
    for group in setup.param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            groups.append(
                {"params": params, "lr": setup.train_config.lr * group.get("lr_scale", 1)}
            )
    return torch.optim.AdamW(groups, lr=setup.train_config.lr)


def _step(setup: Stage2Setup, optimizer: torch.optim.Optimizer, step: int) -> float:
    started = time.perf_counter()
    loss = setup.loss_fn(setup.batch_at(step))["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if setup.train_config.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="toy-s-to-m")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--set", action="append", default=[], help="setting KEY=VALUE")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw

    console = Console()
    pair = load_pair(args.pair)
    old, new = ModelHandle(pair.old, args.device), ModelHandle(pair.new, args.device)
    corpus = load_text_corpus(pair.data.text)
    train_pairs = load_dataset(*split_data_ref(pair.data.pairs))
    support = load_dataset(*split_data_ref(pair.data.support))
    setups: dict[str, Stage2Setup] = {}
    for mode in sweepable_methods():
        method = methods.get(mode)
        config = {**pair.method_config(mode), **overrides}
        ctx = FitContext(
            old=old,
            new=new,
            text_corpus=corpus,
            train_pairs=train_pairs,
            support=support,
            work_dir=cache_dir("runs", pair.name),
            config={k: v for k, v in config.items() if k in method.settings.model_fields},
            device=args.device,
        )
        cfg = method.parse_settings(ctx.config)
        setups[mode] = prepare_stage2(ctx, mode, cfg, pretrain_projection(ctx, cfg))
        setups[mode].encoder.train()
    optimizers = {mode: _optimizer(setup) for mode, setup in setups.items()}
    times: dict[str, list[float]] = {mode: [] for mode in setups}
    for step in range(args.warmup + args.steps):
        for mode, setup in setups.items():
            seconds = _step(setup, optimizers[mode], step)
            if step >= args.warmup:
                times[mode].append(seconds)

    new_params = count_parameters(new.get().model)
    base = statistics.median(times["xbt"])
    rows = []
    for mode, setup in setups.items():
        median = statistics.median(times[mode])
        trainable = setup.info["trainable_in_stage2"]
        # A frozen ψ was still trained, in stage 1: it counts towards the method's total.
        psi_trains = any(p.requires_grad for p in setup.encoder.psi.parameters())
        psi = 0 if psi_trains else count_parameters(setup.encoder.psi)
        rows.append(
            {
                "method": mode,
                "batch": setup.batch,
                "median_step_s": round(median, 4),
                "ratio_to_xbt": round(median / base, 3),
                "old_forwards_per_step": 2 * setup.batch if setup.targets.old_forwards else 0,
                "trainable_stage2": trainable,
                "trainable_total": trainable + psi,
                "share_of_new": round((trainable + psi) / new_params, 4),
            }
        )
    table = Table(title=f"stage-2 step on {pair.name} ({args.device}, {args.steps} steps each)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"NEW ({pair.new}) parameters: {new_params}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"pair": pair.name, "new_params": new_params, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
