import subprocess
import sys
from pathlib import Path

import pytest

from xbt_bench.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_pairs_list_shows_registered_pairs(capsys) -> None:
    code, out, _ = run_cli(["pairs", "list"], capsys)
    assert code == 0
    for name in ("b32-to-l14", "b32-to-h14", "toy-s-to-m", "toy-m-to-l", "toy-s-m-l"):
        assert name in out


def test_pairs_show_unknown_exits_nonzero_with_suggestion(capsys) -> None:
    code, _, err = run_cli(["pairs", "show", "b32-to-l15"], capsys)
    assert code == 1
    assert "did you mean 'b32-to-l14'" in err
    assert "Traceback" not in err


def test_pairs_add_writes_a_valid_file_and_rejects_bad_input(tmp_path: Path, capsys) -> None:
    args = ["pairs", "add", "my-pair", "--old", "zoo:toy-s", "--new", "zoo:toy-l",
            "--description", "mine", "--dir", str(tmp_path)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and (tmp_path / "my-pair.toml").is_file()
    code, _, err = run_cli([*args[:2], "../evil", *args[3:]], capsys)
    assert code == 1 and "not allowed" in err
    code, _, err = run_cli([*args[:4], "not-a-ref", *args[5:]], capsys)
    assert code == 1 and "not-a-ref" in err


def test_malformed_pair_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('description = "x"\nold = 3\n')
    env = {"XBT_BENCH_PAIRS": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "xbt_bench", "pairs", "show", "broken"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "broken.toml" in lines[0] and "field 'old'" in lines[0]
    assert "Traceback" not in proc.stderr
