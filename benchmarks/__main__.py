"""Every speed figure of the suite, in one run: ``python -m benchmarks`` (or ``make bench``).

1. The evaluator against CLIP_benchmark's and against bare FAISS (``bench_eval.py``: 10k caption
   queries x 100k images, d = 512; time and peak memory, each in a fresh process).
2. Exact text-length trimming (``bench_trim.py``: toy towers, and a real-size ViT-B-32 text
   tower at Flickr-like caption lengths).
3. The trainer's overhead against a bare PyTorch loop (``bench_trainer.py``: stage 1, xbt's
   stage 2, finetune's stage 2).
4. The demo's phases: ``xbt-bench run --pair toy-s-to-m`` with only the shipped toy models
   (an empty cache), the same run again with everything cached, and ``xbt-bench publish``;
   with ``--fresh-clone`` also ``make demo`` on a fresh clone of HEAD (install included).

    python -m benchmarks [--quick] [--only eval trim trainer demo] [--fresh-clone]

``--quick`` shrinks the evaluator to 1k x 10k and the other parts to smoke sizes. Each part's
own output is printed as it runs; the summary at the end repeats the ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("eval", "trim", "trainer", "demo")


def _run(
    command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[str, float]:
    """Run ``command``, echo its output, return it and its wall time."""
    print("+ " + " ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    print(done.stdout[-6000:], flush=True)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{command[0]} failed with exit code {done.returncode}")
    return done.stdout, seconds


def bench_script(name: str, *args: str) -> str:
    out, _ = _run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                  env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    return out


def demo_phases(quick: bool) -> list[str]:
    """Seconds of the toy run from an empty cache, of the cached rerun, and of publish."""
    home = Path(tempfile.mkdtemp(prefix="xbt-bench-demo-"))
    out = home / "results"
    cli = [sys.executable, "-m", "xbt_bench"]
    env = {"XBT_BENCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    run = [*cli, "run", "--pair", "toy-s-to-m", "--output-dir", str(out)]
    if quick:
        run.append("--quick")
    try:
        _, cold = _run(run, env)
        _, cached = _run(run, env)
        _, published = _run(
            [*cli, "publish", "--results-dir", str(out), "--output-dir", str(home / "boards")], env
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return [
        f"demo: xbt-bench run --pair toy-s-to-m{' --quick' if quick else ''}, only the shipped "
        f"models present: {cold:.1f} s (target 90 s)",
        f"demo: the same run fully cached: {cached:.1f} s (target 8 s)",
        f"demo: xbt-bench publish: {published:.1f} s",
    ]


def fresh_clone_demo() -> str:
    """Seconds of ``make demo`` on a fresh clone of HEAD with an empty cache."""
    folder = Path(tempfile.mkdtemp(prefix="xbt-bench-clone-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(folder / "repo")], check=True)
        env = {"XBT_BENCH_HOME": str(folder / "home"), "HF_HUB_OFFLINE": "1"}
        _, seconds = _run(["make", "demo"], env, cwd=folder / "repo")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return (
        f"demo: make demo on a fresh clone, empty cache, install included: {seconds:.1f} s "
        "(target 300 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--fresh-clone", action="store_true", help="also time make demo on a clone")
    args = parser.parse_args()
    summary: list[str] = []
    if "eval" in args.only:
        sizes = ["--queries", "1000", "--gallery", "10000"] if args.quick else []
        out = bench_script("bench_eval.py", *sizes)
        summary += [line for line in out.splitlines() if " / " in line or "recalls equal" in line]
    if "trim" in args.only:
        out = bench_script("bench_trim.py", *(["--captions", "2048", "--rounds", "1"]
                                              if args.quick else []))  # fmt: skip
        summary += [
            f"trim: {line.strip()}" for line in out.splitlines() if re.search(r"\dx ", line)
        ]
    if "trainer" in args.only:
        out = bench_script("bench_trainer.py", *(["--rounds", "1", "--stage1-steps", "100"]
                                                 if args.quick else []))  # fmt: skip
        summary += [f"trainer: {line.strip()}" for line in out.splitlines() if "stage" in line
                    and "│" in line]  # fmt: skip
    if "demo" in args.only:
        summary += demo_phases(args.quick)
        if args.fresh_clone:
            summary.append(fresh_clone_demo())
    print("\n== summary ==")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
