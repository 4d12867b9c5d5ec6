"""The package's shape: the import-linter layer contract holds, and every subpackage is in the
packaging list (so a wheel carries it), model zoo included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_layers_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_subpackage_is_packaged() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "xbt_bench").rglob("__init__.py")
    }
    listed = set(config["packages"])
    assert found | {"xbt_bench.model_zoo"} == listed
    assert config["package-dir"]["xbt_bench.model_zoo"] == "model_zoo"
    assert (ROOT / "model_zoo" / "pairs").is_dir() and (ROOT / "model_zoo" / "models").is_dir()


def test_model_zoo_is_found_in_a_checkout() -> None:
    from xbt_bench.paths import model_zoo

    assert model_zoo() == ROOT / "model_zoo"
