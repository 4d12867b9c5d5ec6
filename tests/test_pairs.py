"""Pair files: every registered pair validates (timm-style loop), malformed files and names
are one-line errors naming the file and field, and typos get suggestions."""

from pathlib import Path

import pytest

from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.pairs import (
    DataRefs,
    PairSpec,
    check_pair,
    load_pair,
    pair_registry,
    parse_pair_file,
    write_pair,
)

GOOD = """description = "a test pair"
old = "ViT-B-32:openai"
new = "ViT-L-14:/weights/l14.safetensors"
dataset = "flickr30k"

[data]
text = "captions.txt"
pairs = "mscoco_captions:train"
support = "flickr30k:val"

[methods.xbt]
lora_rank = 8
"""


@pytest.mark.parametrize("name", pair_registry().names())
def test_every_registered_pair_validates(name: str) -> None:
    spec = load_pair(name)  # parsed and checked: methods, settings, datasets, splits
    assert spec.name == name and len(set(spec.chain)) == len(spec.chain) >= 2
    assert spec.description and spec.splits


def test_builtin_pairs_are_registered() -> None:
    names = pair_registry().names()
    assert {"b32-to-l14", "b32-to-h14", "toy-s-to-m", "toy-m-to-l", "toy-s-m-l"} <= set(names)
    l14 = load_pair("b32-to-l14")
    assert (l14.old, l14.new) == ("ViT-B-32:openai", "ViT-L-14:openai")
    assert load_pair("b32-to-h14").new == "ViT-H-14:laion2b_s32b_b79k"
    assert load_pair("toy-s-m-l").chain == ["zoo:toy-s", "zoo:toy-m", "zoo:toy-l"]


def test_unknown_pair_suggests_name() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'b32-to-l14'"):
        load_pair("b32-to-l15")


def test_good_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    spec = parse_pair_file(path)
    assert spec.name == "mine" and spec.method_config("xbt") == {"lora_rank": 8}
    assert spec.splits == ["test"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s.replace('old = "ViT-B-32:openai"\n', ""), "old"),
        (lambda s: s.replace('dataset = "flickr30k"', "dataset = 3"), "dataset"),
        (lambda s: s.replace('"ViT-B-32:openai"', '"ViT-B-32"'), "old"),
        (lambda s: s.replace("/weights/l14.safetensors", "/w/l14.zip"), "new"),
        (lambda s: "extra = 1\n" + s, "extra"),
        (lambda s: s.replace('support = "flickr30k:val"\n', ""), "data.support"),
    ],
)
def test_malformed_file_names_file_and_field(tmp_path: Path, edit, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(ConfigError) as info:
        parse_pair_file(path)
    message = str(info.value)
    assert str(path) in message and f"field '{field}'" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "x y"])
def test_unsafe_pair_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        PairSpec(
            name=name, description="d", old="a:b", new="c:d", dataset="x",
            data=DataRefs(text="t:x", pairs="p:x", support="s:x"),
        )


def test_write_pair_round_trips_and_refuses_overwrite(tmp_path: Path) -> None:
    spec = PairSpec(
        name="mine", description="d", old="zoo:toy-s", new="hf-hub:org/repo", dataset="toy-shapes",
        data=DataRefs(
            text="toy-shapes:text", pairs="toy-shapes:pairs", support="toy-shapes:support"
        ),
    )
    path = write_pair(spec, tmp_path)
    assert parse_pair_file(path) == spec
    with pytest.raises(Exception, match="--force"):
        write_pair(spec, tmp_path)


TOY = """description = "a toy pair"
old = "zoo:toy-s"
new = "zoo:toy-m"
dataset = "toy-shapes"
splits = ["test"]

[data]
text = "toy-shapes:text"
pairs = "toy-shapes:pairs"
support = "toy-shapes:support"

[methods.xbt]
lora_rank = 8
"""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("[methods.xbt]", "[methods.xbtt]"), "did you mean 'xbt'"),
        (lambda s: s.replace("lora_rank = 8", "lora_rnk = 8"), "did you mean 'lora_rank'"),
        (lambda s: s.replace("lora_rank = 8", "lora_rank = 0"), "lora_rank=0"),
        (lambda s: s.replace('dataset = "toy-shapes"', 'dataset = "toy-shapez"'), "'toy-shapes'"),
        (lambda s: s.replace('splits = ["test"]', 'splits = ["tset"]'), "did you mean 'test'"),
        (lambda s: s.replace("toy-shapes:pairs", "toy-shapes:pair"), "did you mean 'pairs'"),
        (lambda s: s.replace("toy-shapes:support", "toy-shape:support"), "'toy-shapes'"),
    ],
)
def test_typos_in_a_pair_file_are_one_line_errors_with_a_suggestion(
    tmp_path: Path, edit, message: str
) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(TOY)
    check_pair(parse_pair_file(path), path)  # the unedited file is fine
    path.write_text(edit(TOY))
    with pytest.raises(ConfigError, match=message) as info:
        check_pair(parse_pair_file(path), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_old_equal_to_new_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "same.toml"
    path.write_text(TOY.replace('new = "zoo:toy-m"', 'new = "zoo:toy-s"'))
    with pytest.raises(ConfigError, match="zoo:toy-s appears more than once"):
        parse_pair_file(path)


def test_pairs_show_and_add_check_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xbt_bench.cli import main

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "typo.toml").write_text(TOY.replace('splits = ["test"]', 'splits = ["tset"]'))
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(folder))
    assert run("pairs", "show", "typo") == 1
    assert "did you mean 'test'" in capsys.readouterr().err
    args = ["pairs", "add", "mine", "--old", "zoo:toy-s", "--new", "zoo:toy-m",
            "--description", "d", "--dir", str(folder)]  # fmt: skip
    assert run(*args, "--dataset", "toy-shapez") == 1
    err = capsys.readouterr().err
    assert "did you mean 'toy-shapes'" in err and "Traceback" not in err
    assert not (folder / "mine.toml").exists()
    assert run(*args, "--split", "tset") == 1
    assert "did you mean 'test'" in capsys.readouterr().err
    assert run(*args) == 0 and (folder / "mine.toml").exists()
