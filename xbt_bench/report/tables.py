"""The terminal's tables (rich): datasets, registered pairs and methods, a method's settings,
a pair's diagnostics, the toy models, and any pandas table. The CLI only prints them. Every
string that comes from a user's file (a pair's name, description, model references) is
escaped, so rich never reads it as markup.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich.markup import escape
from rich.table import Table

from xbt_bench.data.registry import DATASET_INFOS, PATTERN_INFOS
from xbt_bench.methods import method_names, methods
from xbt_bench.pairs import PairSpec
from xbt_bench.results import DiagnosticsResult
from xbt_bench.toy.zoo import ZooEntry


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    """A pandas table as a rich one, every cell as text (escaped)."""
    table = Table(title=escape(title))
    for column in frame.columns:
        table.add_column(escape(str(column)), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(str(value)) for value in row))
    return table


def datasets_table() -> Table:
    """Every dataset name (and name pattern), its splits and the files it needs."""
    table = Table(title="Datasets (files are looked up in --data-root)")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "splits", "needs"):
        table.add_column(column, overflow="fold")
    for info in (*DATASET_INFOS, *PATTERN_INFOS):
        table.add_row(*map(escape, (info.name, info.kind, ", ".join(info.splits), info.needs)))
    return table


def pairs_table(specs: Sequence[tuple[PairSpec, bool]]) -> Table:
    """Registered pairs (``(spec, shadows another file)``) with their models and datasets."""
    table = Table(title="Registered pairs")
    for column in ("name", "old", "new", "dataset", "description"):
        table.add_column(column, overflow="fold")
    for spec, shadows in specs:
        new = " -> ".join(spec.chain[1:]) if spec.is_chain else spec.new
        row = (spec.name + (" *" if shadows else ""), spec.old, new, spec.dataset, spec.description)
        table.add_row(*map(escape, row))
    return table


def methods_table() -> Table:
    """Every registered method: what it trains and when it needs OLD."""
    table = Table(title="Methods (docs/methods.md)")
    for column in ("method", "trains", "OLD at query time", "OLD in training", "notes"):
        table.add_column(column, overflow="fold")
    for name in method_names():
        method = methods.get(name)
        query = "yes" if method.old_at_query else "no"
        label = f"{name} (variant)" if method.variant else name
        row = (label, method.trains, query, method.training_needs, method.notes)
        table.add_row(*map(escape, row))
    return table


def settings_table(name: str) -> Table:
    """One method's settings with their defaults and meanings."""
    method = methods.get(name)
    table = Table(title=f"{escape(method.name)} settings")
    for column in ("setting", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for setting, default, meaning in method.describe_settings():
        table.add_row(escape(setting), escape(default), escape(meaning))
    return table


def search_table(name: str) -> Table:
    """The ranges ``xbt-bench tune`` searches ``name``'s settings over."""
    method = methods.get(name)
    table = Table(title=f"{escape(method.name)} search space (xbt-bench tune)")
    table.add_column("setting")
    table.add_column("searched over", overflow="fold")
    for setting, values in method.search.describe():
        table.add_row(escape(setting), escape(values))
    return table


def diagnostics_table(report: DiagnosticsResult) -> Table:
    """A pair's diagnostics on one split, each measure with its meaning."""
    table = Table(title=escape(f"{report.pair} · {report.dataset} · split {report.split}"))
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("meaning", overflow="fold")
    fit, gap = report.procrustes, report.capability_gap
    rows = [
        *[
            (f"{which} modality gap", getattr(report, which).modality_gap,
             "‖mean image − mean text‖")
            for which in ("old", "new")
        ],
        *[
            (f"{which} matched cosine", getattr(report, which).matched_cosine,
             "caption vs its image")
            for which in ("old", "new")
        ],
        ("CKA texts", report.cka_texts, "linear CKA of OLD and NEW on the same captions"),
        ("CKA images", report.cka_images, "... on the same images"),
        ("rotation R² texts", fit.r2_texts,
         f"orthogonal map fitted on {report.fit_corpus}, on the split's captions"),
        ("rotation R² images", fit.r2_images, "the same map on images"),
        ("linear R² texts", fit.linear_r2_texts, "a general linear map, for reference"),
        ("new−old R@1 T2I", gap.t2i_r1, "points"),
        ("new−old R@1 I2T", gap.i2t_r1, "points"),
        ("new−old rsum", gap.rsum_percent, "percent of old→old's rsum"),
    ]  # fmt: skip
    for label, value, meaning in rows:
        table.add_row(label, f"{value:.3f}", escape(meaning))
    return table


ZOO_LEGEND = (
    "towers: width x layers (/patch px); tau: the recipe's contrastive temperature (~: "
    "learned); match: mean cosine of a caption and its image; gap: modality gap "
    "‖mean image − mean text‖; intra i/t: mean cosine between images / between captions"
)


def zoo_table(entries: Sequence[ZooEntry]) -> Table:
    """Each toy model: where its weights are, its size, test retrieval and geometry."""
    table = Table(title="Toy models (R@1 and geometry on the toy test split)")
    columns = (
        "model", "weights", "dim", "towers", "tau", "R@1 t2i/i2t", "match", "gap", "intra i/t"
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("model", "weights"), overflow="fold")
    for entry in entries:
        vision, text = entry.model_config["vision_cfg"], entry.model_config["text_cfg"]
        settings = entry.settings
        card = entry.card()
        source = "shipped" if entry.ships_weights else "built" if entry.is_built else "none"
        row = [
            entry.name,
            source,
            str(entry.model_config["embed_dim"]),
            f"vit {vision['width']}x{vision['layers']}/{vision['patch_size']} "
            f"txt {text['width']}x{text['layers']}",
            f"{settings.temperature:g}" + ("~" if settings.learn_temperature else ""),
        ]
        if card:
            recall, geometry = card["retrieval"], card["geometry"]
            row += [
                f"{recall['t2i_r1']:.1f}/{recall['i2t_r1']:.1f}",
                f"{geometry['matched_cosine']:.2f}",
                f"{geometry['modality_gap']:.2f}",
                f"{geometry['image_intra_cosine']:.2f}/{geometry['text_intra_cosine']:.2f}",
            ]
        else:
            row += ["-"] * 4
        table.add_row(*map(escape, row))
    return table
