"""Every speed figure of the suite, in one run: ``python -m benchmarks`` (or ``make bench``).

1. The evaluator against CLIP_benchmark's and against bare FAISS (``bench_eval.py``: 10k caption
   queries x 100k images, d = 512; time and peak memory, each in a fresh process).
2. Exact text-length trimming (``bench_trim.py``: toy towers, and a real-size ViT-B-32 text
   tower at Flickr-like caption lengths).
3. The trainer's overhead against a bare PyTorch loop (``bench_trainer.py``: stage 1, xbt's
   stage 2, finetune's stage 2).
4. The demo's phases: ``xbt-bench run --pair toy-s-to-m`` with only the shipped toy models
   (an empty cache), where its time went per method (fit, cache filling, training), the same
   run again with everything cached, and ``xbt-bench publish``, each with how busy the machine
   was meanwhile; with ``--fresh-clone`` also ``make demo`` on a fresh clone of HEAD (install
   included).

    python -m benchmarks [--quick] [--only eval trim trainer demo] [--fresh-clone] [--threads N]

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


def _busy_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of the CPUs that processes other than the measured child used between two
    :func:`_machine` samples (a number near 0 on a quiet machine)."""
    (wall0, busy0, ours0), (wall1, busy1, ours1) = before, after
    span = max(wall1 - wall0, 1e-6) * (os.cpu_count() or 1)
    return min(1.0, max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / span))


def _machine() -> tuple[float, float, float]:
    """(monotonic seconds, busy CPU seconds of the whole machine, CPU seconds of our children)."""
    import resource

    import psutil

    times = psutil.cpu_times()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    return time.monotonic(), busy, children.ru_utime + children.ru_stime


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds of ``command`` and the share of the CPUs other processes used meanwhile."""
    before = _machine()
    _, seconds = _run(command, env)
    return seconds, _busy_share(before, _machine())


def _phases(results: Path) -> list[str]:
    """Per method of a run's results: its wall time, fit time, cache filling and training."""
    import json

    lines = []
    for path in sorted(results.glob("*/*/*.json")):
        data = json.loads(path.read_text())
        if data.get("kind", "run") != "run":
            continue
        cost = data["cost"]
        lines.append(
            f"demo:   {data['method']:<12} wall {cost['wall_time_s']:6.1f} s, fit "
            f"{cost['fit_time_s']:6.1f} s, cache filling {cost.get('cache_fill_s', 0.0):6.1f} s, "
            f"training {cost['training_time_s']:6.1f} s"
        )
    return lines


def demo_phases(quick: bool, threads: int | None = None) -> list[str]:
    """Seconds of the toy run from an empty cache (only the shipped models present), of the
    cached rerun and of publish, measured in this one run; where the cold run's time went, per
    method; and how busy the machine was during each (other processes' share of the CPUs: a
    timing taken while it is far from 0 is indicative only)."""
    home = Path(tempfile.mkdtemp(prefix="xbt-bench-demo-"))
    out = home / "results"
    cli = [sys.executable, "-m", "xbt_bench"]
    env = {"XBT_BENCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if threads is not None:  # torch's intra-op threads (its default: one per core)
        env["OMP_NUM_THREADS"] = str(threads)
    run = [*cli, "run", "--pair", "toy-s-to-m", "--results-dir", str(out)]
    if quick:
        run.append("--quick")
    try:
        cold, cold_busy = _timed(run, env)
        phases = _phases(out)
        cached, cached_busy = _timed(run, env)
        published, publish_busy = _timed(
            [*cli, "publish", "--results-dir", str(out), "--report-dir", str(home / "boards")], env
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)

    def busy(share: float) -> str:
        verdict = "quiet" if share < 0.1 else "BUSY: indicative only"
        return f"(other processes used {100 * share:.0f}% of the CPUs: {verdict})"

    where = f" with OMP_NUM_THREADS={threads}" if threads is not None else ""
    return [
        f"demo: xbt-bench run --pair toy-s-to-m{' --quick' if quick else ''}{where}, only the "
        f"shipped models present: {cold:.1f} s (target 90 s) {busy(cold_busy)}",
        *phases,
        f"demo: the same run fully cached: {cached:.1f} s (target 8 s) {busy(cached_busy)}",
        f"demo: xbt-bench publish: {published:.1f} s {busy(publish_busy)}",
    ]


def fresh_clone_demo() -> str:
    """Seconds of ``make demo`` on a fresh clone of HEAD with an empty cache."""
    folder = Path(tempfile.mkdtemp(prefix="xbt-bench-clone-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(folder / "repo")], check=True)
        env = {"XBT_BENCH_HOME": str(folder / "home"), "HF_HUB_OFFLINE": "1"}
        _, seconds = _run(["make", "demo"], env, cwd=folder / "repo")
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "results", "leaderboards"],
            cwd=folder / "repo", capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    committed = "untouched" if not status else f"CHANGED: {status.splitlines()[:3]}"
    return (
        f"demo: make demo on a fresh clone, empty cache, install included: {seconds:.1f} s "
        f"(target 300 s); results/ and leaderboards/ {committed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--fresh-clone", action="store_true", help="also time make demo on a clone")
    parser.add_argument("--threads", type=int, help="the demo's torch threads (OMP_NUM_THREADS)")
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
        summary += demo_phases(args.quick, args.threads)
        if args.fresh_clone:
            summary.append(fresh_clone_demo())
    print("\n== summary ==")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
