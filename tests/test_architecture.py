"""The package's shape: the import-linter layer contract holds, and every subpackage is in the
packaging list (so a wheel carries it), model zoo included."""

from __future__ import annotations

import ast
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
    zoo = {f"xbt_bench.model_zoo.{d.name}" for d in (ROOT / "model_zoo").iterdir() if d.is_dir()}
    listed = set(config["packages"])
    assert found | {"xbt_bench.model_zoo"} | zoo == listed
    assert config["package-dir"]["xbt_bench.model_zoo"] == "model_zoo"
    assert (ROOT / "model_zoo" / "pairs").is_dir() and (ROOT / "model_zoo" / "models").is_dir()


def test_model_zoo_is_found_in_a_checkout() -> None:
    from xbt_bench.paths import model_zoo

    assert model_zoo() == ROOT / "model_zoo"


# The functions that read a result file back, and the only modules allowed to call them: the
# results package itself and the reports (and the CLI's report commands) that join the files.
READERS = {"from_json", "from_data", "read_result", "read_object", "load_result_set",
           "load_results"}  # fmt: skip
MAY_READ = ("xbt_bench/results/", "xbt_bench/report/", "xbt_bench/cli.py")


def reader_calls(source: str) -> list[str]:
    """``line name`` of every call of a result reader in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in READERS:
                found.append(f"{node.lineno} {name}")
    return found


def test_no_command_reads_a_result_file_back_to_merge_into_it() -> None:
    """Each command writes its own file and never reads one: outside the readers (results/,
    report/, the CLI's report commands) no module calls a result reader."""
    calls = [
        f"{path.relative_to(ROOT).as_posix()}:{call}"
        for path in sorted((ROOT / "xbt_bench").rglob("*.py"))
        if not path.relative_to(ROOT).as_posix().startswith(MAY_READ)
        for call in reader_calls(path.read_text(encoding="utf-8"))
    ]
    assert calls == []


def test_the_guard_finds_the_read_backs_it_replaced() -> None:
    """What round 2's runner and sweep did (``keep_recorded``, ``onto_seeded_run``) is caught."""
    keep_recorded = "def keep(result, root):\n    old = RunResult.from_json(result.path_in(root))\n"
    onto_seeded_run = "def onto(result, root):\n    return load_results(root)[0]\n"
    assert reader_calls(keep_recorded) == ["2 from_json"]
    assert reader_calls(onto_seeded_run) == ["2 load_results"]
