"""``xbt-bench export`` and ``xbt_bench.load_query_encoder``: the exported encoder re-embeds the
test queries (raw images and captions) into OLD's space and scores what the result scored, for a
closed form (procrustes), one that keeps OLD at query time (slerp), trained ones (xbt: ψ plus
LoRA on NEW; finetune: ψ plus NEW's trained weights) and xbt's query SLERP'd with OLD's
(xbt-hybrid)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open
from support import run_cli, tiny_settings

from xbt_bench import load_query_encoder
from xbt_bench.data import load_dataset
from xbt_bench.embed import embed_set
from xbt_bench.errors import XbtError
from xbt_bench.eval import evaluate_retrieval
from xbt_bench.models.loading import load_model
from xbt_bench.pairs import load_pair
from xbt_bench.results import RunResult

pytestmark = pytest.mark.slow  # trains xbt (tiny) and embeds a small toy split several times

METHODS = ("procrustes", "slerp", "xbt", "xbt-hybrid", "finetune")


def test_exported_encoders_reembed_the_queries_as_the_result_scored(
    small_pair: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results"
    args = ["run", "--pair", small_pair, "--output-dir", str(out), *tiny_settings()]
    code = run_cli([*args, *(arg for m in METHODS for arg in ("--method", m))])
    assert code == 0, capsys.readouterr().err
    spec = load_pair(small_pair)
    data = load_dataset(spec.dataset, "test")
    gallery = embed_set(load_model(spec.old), data)  # OLD's gallery, as the run embedded it
    images = [data.load_image(i) for i in range(data.n_images)]
    for method in METHODS:
        path = tmp_path / f"{method}.safetensors"
        code = run_cli(["export", "--pair", small_pair, "--method", method, "--output",
                        str(path), "--results-dir", str(out)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        result = RunResult.from_json(next(out.glob(f"{small_pair}/*/{method}.json")))
        encoder = load_query_encoder(path)
        manifest = encoder.manifest
        assert (manifest["pair"], manifest["method"], manifest["seed"]) == (small_pair, method, 0)
        assert manifest["fingerprints"] == result.fingerprints
        assert manifest["metrics"]["test"]["method->old"] == result.metrics["method->old"]
        assert manifest["settings"] == {k: v for k, v in result.config.items() if k != "quick"}
        queries = encoder.encode_image(images), encoder.encode_text(list(data.captions))
        assert queries[0].shape == (data.n_images, encoder.dim)
        scored = evaluate_retrieval(
            image_queries=queries[0], text_queries=queries[1], image_gallery=gallery.images,
            text_gallery=gallery.texts, caption_image=data.caption_image,
        ).metrics  # fmt: skip
        assert scored == pytest.approx(result.metrics["method->old"], abs=0.01), method
    # slerp keeps OLD at query time, with its α per direction; xbt carries ψ and NEW's LoRA
    slerp = load_query_encoder(tmp_path / "slerp.safetensors")
    assert slerp.needs_old and slerp.alpha == {"image": slerp.manifest["report"]["alpha_i2t"],
                                               "text": slerp.manifest["report"]["alpha_t2i"]}
    assert set(slerp.manifest["support"]["scores"]) == {"i2t", "t2i"}
    xbt = load_query_encoder(tmp_path / "xbt.safetensors")
    assert xbt.adapters == {"kind": "lora", "towers": "image", "rank": 8, "alpha": 8}
    assert load_query_encoder(tmp_path / "finetune.safetensors").adapters == {"kind": "weights"}
    assert load_query_encoder(tmp_path / "xbt-hybrid.safetensors").needs_old
    with safe_open(str(tmp_path / "xbt.safetensors"), "np") as handle:
        names = list(handle.keys())
    assert any(n.startswith("psi.") for n in names)
    assert any(n.startswith("adapters.visual.") and "lora_A" in n for n in names)
    with pytest.raises(XbtError, match="cannot be mapped; embed the queries with encode_text"):
        xbt.map_new_embeddings(gallery.texts)
    # the recorded NEW fingerprint guards against other weights
    wrong = load_query_encoder(tmp_path / "procrustes.safetensors", new="zoo:toy-l")
    with pytest.raises(XbtError, match="but the encoder was fitted with"):
        wrong.encode_text(["a small red circle"])


def test_export_refuses_what_it_cannot_export(small_pair: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    assert run_cli(["run", "--pair", small_pair, "--method", "old", "--method", "procrustes",
                    "--output-dir", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    cases = [
        (["--method", "old"], "no query encoder of its own"),
        (["--method", "procrustes", "--seed", "3"], "ran seeds [0], not 3"),
        (["--method", "linear"], "run `xbt-bench run --pair small-s-to-m --method linear`"),
    ]
    for extra, message in cases:
        code = run_cli(["export", "--pair", small_pair, "--output", str(tmp_path / "x"),
                        "--results-dir", str(out), *extra])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and message in " ".join(err.split()), err
