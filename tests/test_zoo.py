from pathlib import Path

import pytest

from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.zoo import PairData, PairSpec, load_pair, pair_registry, parse_pair_file, write_pair

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


def test_builtin_pairs_are_registered_and_valid() -> None:
    names = pair_registry().names()
    for name in ("b32-to-l14", "b32-to-h14", "toy-s-to-m", "toy-m-to-l", "toy-s-m-l"):
        assert name in names
        spec = load_pair(name)
        assert spec.name == name
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
            data=PairData(text="t:x", pairs="p:x", support="s:x"),
        )


def test_write_pair_round_trips_and_refuses_overwrite(tmp_path: Path) -> None:
    spec = PairSpec(
        name="mine", description="d", old="zoo:toy-s", new="hf-hub:org/repo", dataset="toy-shapes",
        data=PairData(text="toy:text", pairs="toy:pairs", support="toy:support"),
    )
    path = write_pair(spec, tmp_path)
    assert parse_pair_file(path) == spec
    with pytest.raises(Exception, match="--force"):
        write_pair(spec, tmp_path)
