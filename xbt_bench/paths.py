"""Where xbt-bench keeps its files: the model zoo it ships, and its caches (``$XBT_BENCH_HOME``
or the user's cache directory)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import storage_error

_PACKAGE = Path(__file__).resolve().parent


def model_zoo() -> Path:
    """The model zoo folder (``pairs/*.toml``, toy model configs, recipes and weights): the
    repository's ``model_zoo/`` in a source checkout or editable install, else the copy a wheel
    installs as ``xbt_bench/model_zoo``."""
    source = _PACKAGE.parent / "model_zoo"
    return source if (source / "pairs").is_dir() else _PACKAGE / "model_zoo"


def zoo_models_dir() -> Path:
    """``model_zoo/models``: the toy models' open_clip configs, recipes and shipped weights."""
    return model_zoo() / "models"


def home() -> Path:
    """The root of every cache (toy data, toy models, embeddings, training checkpoints)."""
    env = os.environ.get("XBT_BENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "xbt-bench"


def cache_dir(*parts: str) -> Path:
    """``home()/parts...``, created if missing; StorageError naming it when the disk refuses
    (a read-only or full home)."""
    path = home().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(path, error) or error from None
    return path


def relative_to_home(path: str | os.PathLike[str]) -> str:
    """``path`` as ``$XBT_BENCH_HOME/...`` when it lies under the cache root (results record no
    machine's absolute paths), else as given."""
    path = Path(path)
    try:
        return f"$XBT_BENCH_HOME/{path.resolve().relative_to(home().resolve()).as_posix()}"
    except ValueError:
        return str(path)


# Where the commands write when no folder is named: a folder of their own in the current
# directory, never the committed results/ and leaderboards/ (only `make results`, which names
# them, writes there); --quick runs go to a folder of their own again, so a smoke run never
# replaces or joins full results.
OUTPUT_ROOT = Path("out")
# What `make results` writes and the repository commits (tuned settings are also read from it).
COMMITTED_RESULTS_DIR = Path("results")
RESULTS_DIR = OUTPUT_ROOT / "results"
REPORT_DIR = OUTPUT_ROOT / "leaderboards"
QUICK_RESULTS_DIR = OUTPUT_ROOT / "quick" / "results"
QUICK_REPORT_DIR = OUTPUT_ROOT / "quick" / "leaderboards"


def default_results_dir(quick: bool = False) -> Path:
    """The results folder a command uses when none is given (``--quick`` runs: their own)."""
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


def default_report_dir(results_dir: str | os.PathLike[str]) -> Path:
    """The folder for tables, plots and the page when none is given: ``out/quick/leaderboards``
    for the quick runs' folder, else ``out/leaderboards``."""
    quick = Path(results_dir).resolve() == QUICK_RESULTS_DIR.resolve()
    return QUICK_REPORT_DIR if quick else REPORT_DIR
