"""The ``xbt-bench`` command line: thin wrappers that parse options and call the library."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

# Set before huggingface_hub is imported anywhere: progress bars and telemetry only.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import typer
from rich.console import Console
from rich.table import Table

from .errors import XbtError

if TYPE_CHECKING:
    from .models.toy_zoo import ZooEntry
    from .runner import RunOptions

# Piped or logged output keeps whole numbers in the summary tables (rich would wrap it at 80).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)

app = typer.Typer(
    name="xbt-bench",
    help="Benchmark backward-compatible upgrades of CLIP models (XBT and its rivals).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
pairs_app = typer.Typer(
    help="Registered upgrade pairs (model_zoo/pairs/*.toml).", no_args_is_help=True
)
models_app = typer.Typer(help="Model references and the model loader.", no_args_is_help=True)
app.add_typer(pairs_app, name="pairs")
app.add_typer(models_app, name="models")
datasets_app = typer.Typer(
    help="Evaluation and training datasets (toy world, CLIP_benchmark, webdatasets, folders).",
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")
methods_app = typer.Typer(
    help="Methods that build backward-compatible query encoders (XBT and its rivals).",
    no_args_is_help=True,
)
app.add_typer(methods_app, name="methods")
zoo_app = typer.Typer(
    help="Toy open_clip models trained on the toy world (model_zoo/models/toy-*.json).",
    no_args_is_help=True,
)
app.add_typer(zoo_app, name="zoo")


@pairs_app.command("list")
def pairs_list() -> None:
    """Show every registered pair as a table."""
    from .zoo import pair_registry, parse_pair_file

    registry = pair_registry()
    table = Table(title="Registered pairs")
    for column in ("name", "old", "new", "dataset", "description"):
        table.add_column(column, overflow="fold")
    for name in registry.names():
        spec = parse_pair_file(registry.get(name))
        old_new = " -> ".join(spec.chain[1:]) if spec.is_chain else spec.new
        table.add_row(name, spec.old, old_new, spec.dataset, spec.description)
    console.print(table)


@pairs_app.command("show")
def pairs_show(name: Annotated[str, typer.Argument(help="pair name, e.g. toy-s-to-m")]) -> None:
    """Print one pair's file (validated) and where it lives."""
    from .zoo import load_pair, pair_registry

    spec = load_pair(name)
    console.print(f"[bold]{spec.name}[/bold]  ({pair_registry().get(spec.name)})")
    console.print(spec.to_toml(), markup=False, highlight=False)


@pairs_app.command("add")
def pairs_add(
    name: Annotated[str, typer.Argument(help="new pair name (a safe file name)")],
    old: Annotated[str, typer.Option(help="OLD model reference, e.g. ViT-B-32:openai")],
    new: Annotated[str, typer.Option(help="NEW model reference, e.g. ViT-L-14:openai")],
    description: Annotated[str, typer.Option(help="one line saying what the upgrade is")],
    dataset: Annotated[str, typer.Option(help="default evaluation dataset")] = "toy-shapes",
    split: SplitOption = None,
    via: Annotated[list[str] | None, typer.Option(help="intermediate model of a chain")] = None,
    text: Annotated[str, typer.Option(help="stage-1 text corpus")] = "toy-shapes:text",
    pairs: Annotated[str, typer.Option(help="stage-2 image-caption pairs")] = "toy-shapes:pairs",
    support: Annotated[str, typer.Option(help="support split")] = "toy-shapes:support",
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="folder to write to (default: $XBT_BENCH_HOME/pairs)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Write a validated pair file from flags."""
    from .paths import home
    from .zoo import PairData, PairSpec, write_pair

    spec = PairSpec(
        name=name,
        description=description,
        old=old,
        new=new,
        via=via or [],
        dataset=dataset,
        splits=split or ["test"],
        data=PairData(text=text, pairs=pairs, support=support),
    )
    path = write_pair(spec, directory or home() / "pairs", overwrite=force)
    console.print(f"wrote {path}")


@models_app.command("info")
def models_info(
    ref: Annotated[str, typer.Argument(help="model reference, e.g. ViT-B-32:openai or zoo:toy-s")],
) -> None:
    """Load a model through the loader and print its embedding size and identity."""
    from .models.loading import load_model

    loaded = load_model(ref)
    console.print(f"{ref}: embed_dim={loaded.embed_dim} identity={loaded.identity}")
    console.print(f"weights: {loaded.weights_path}")


@datasets_app.command("list")
def datasets_list() -> None:
    """Show every dataset name (and name pattern), its splits and the files it needs."""
    from .data.registry import DATASET_INFOS, PATTERN_INFOS

    table = Table(title="Datasets (files are looked up in --data-root)")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "splits", "needs"):
        table.add_column(column, overflow="fold")
    for info in (*DATASET_INFOS, *PATTERN_INFOS):
        table.add_row(info.name, info.kind, ", ".join(info.splits), info.needs)
    console.print(table)


@datasets_app.command("check")
def datasets_check(
    name: Annotated[str, typer.Argument(help="dataset, e.g. flickr30k, wds/NAME, folder:PATH")],
    data_root: Annotated[
        Path | None, typer.Option(help="folder holding the dataset's files")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="split to check (default: test, or the only one)")
    ] = None,
) -> None:
    """Load one split, checking every file, and report what was found."""
    from .data.registry import check_dataset, dataset_info

    split = split or dataset_info(name).default_split
    found = check_dataset(name, split, data_root)
    low, high = found.captions_per_image
    per_image = f"{low}" if low == high else f"{low}-{high}"
    console.print(f"[bold]{found.key}[/bold]: ok", highlight=False)
    for label, value in found.sources.items():
        console.print(f"  {label}: {value}", highlight=False, soft_wrap=True)
    console.print(f"  images: {found.n_images}", highlight=False)
    console.print(f"  captions: {found.n_captions} ({per_image} per image)", highlight=False)
    console.print(f"  fingerprint: {found.fingerprint}", highlight=False)
    if found.expected is not None:
        images, captions = found.expected
        verdict = "matches" if found.matches_expected else "differs from"
        console.print(
            f"  {verdict} the published size ({images} images, {captions} captions)",
            highlight=False,
        )


@methods_app.command("list")
def methods_list() -> None:
    """Show every registered method: what it trains and when it needs OLD."""
    from .methods import method_cards, methods

    table = Table(title="Methods (SPEC §3)")
    for column in ("method", "trains", "OLD at query time", "OLD in training", "notes"):
        table.add_column(column, overflow="fold")
    for name in methods.names():
        card = method_cards[name]
        query = "yes" if card.old_at_query else "no"
        label = name if card.in_default_run else f"{name} (variant)"
        table.add_row(label, card.trains, query, card.old_in_training, card.notes)
    console.print(table)
    console.print("variants run only when named: xbt-bench run --pair P --method NAME")


@methods_app.command("show")
def methods_show(name: Annotated[str, typer.Argument(help="method name, e.g. xbt")]) -> None:
    """Show one method's settings with their defaults (set them in a pair file's
    ``[methods.NAME]`` table or with ``xbt-bench run --set KEY=VALUE``)."""
    from .methods import describe_settings, method_cards, methods

    name = methods.canonical(name)
    card = method_cards[name]
    console.print(f"[bold]{name}[/bold]: {card.notes}")
    table = Table(title=f"{name} settings")
    for column in ("setting", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for setting, default, meaning in describe_settings(name):
        table.add_row(setting, default, meaning)
    console.print(table if table.rows else "(no settings)")


ResultsDirOption = Annotated[
    Path, typer.Option(help="folder of result files (<pair>/<dataset>/<method>.json)")
]
ReportDirOption = Annotated[Path, typer.Option(help="folder for tables, plots and the page")]


def _parse_overrides(values: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` strings -> a dict, values parsed as JSON where they parse (3, 0.5, true)."""
    import json

    from .errors import ConfigError

    overrides: dict[str, object] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: use KEY=VALUE, e.g. --set lora_rank=8")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


SplitOption = Annotated[list[str] | None, typer.Option(help="evaluation split (repeatable)")]
DataRootOption = Annotated[Path | None, typer.Option(help="root folder of on-disk datasets")]
ResultsOption = Annotated[Path, typer.Option(help="where result JSONs go")]
SeedOption = Annotated[int, typer.Option(help="seed of every random choice")]
DeviceOption = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1")]
WorkersOption = Annotated[int | None, typer.Option(help="data-loader workers (default: up to 4)")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="method setting KEY=VALUE for every method that has it"),
]


def _run_options(
    pair: str,
    methods: list[str] | None,
    dataset: str | None,
    splits: list[str] | None,
    data_root: Path | None,
    output_dir: Path,
    seed: int,
    device: str,
    quick: bool,
    workers: int | None,
    settings: list[str] | None,
) -> RunOptions:
    """The options ``run`` and ``sweep`` share, in their order there, as RunOptions."""
    from .runner import RunOptions

    return RunOptions(
        pair=pair,
        methods=methods or [],
        dataset=dataset,
        splits=splits or [],
        data_root=data_root,
        output_dir=output_dir,
        seed=seed,
        device=device,
        quick=quick,
        num_workers=workers,
        overrides=_parse_overrides(settings),
    )


@contextmanager
def _torchrun_job(device: str) -> Iterator[str]:
    """Join the torchrun job (if launched by one) for the command's duration; yields the device
    to use: NCCL with GPU LOCAL_RANK per process for a CUDA ``device``, gloo otherwise."""
    from .distributed import init_distributed, shutdown_distributed

    info = init_distributed("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield str(info.device) if info.backend == "nccl" else device
    finally:
        shutdown_distributed()


@app.command("run")
def run_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    method: Annotated[
        list[str] | None, typer.Option(help="method to run (repeatable; default: all but variants)")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="evaluation dataset")] = None,
    split: SplitOption = None,
    data_root: DataRootOption = None,
    output_dir: ResultsOption = Path("results"),
    seed: SeedOption = 0,
    device: DeviceOption = "cpu",
    quick: Annotated[bool, typer.Option(help="fewer steps and pairs: a smoke run")] = False,
    workers: WorkersOption = None,
    set_: SetOption = None,
) -> None:
    """Run a pair end to end: embed, fit every method, score every setting, write results.
    Under torchrun the ranks share the embedding and the training (DDP); rank 0 writes."""
    from .runner import run

    with _torchrun_job(device) as device:
        options = _run_options(
            pair, method, dataset, split, data_root, output_dir, seed, device, quick, workers, set_
        )
        run(options, console)


@app.command("sweep")
def sweep_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    method: Annotated[
        list[str] | None,
        typer.Option(help="stage-2 method (repeatable; default: xbt, distill, finetune)"),
    ] = None,
    pairs: Annotated[
        str, typer.Option("--pairs", help="comma-separated numbers of image-text pairs")
    ] = "0,500,2000,8000",
    split: SplitOption = None,
    data_root: DataRootOption = None,
    output_dir: ResultsOption = Path("results"),
    seed: SeedOption = 0,
    device: DeviceOption = "cpu",
    quick: Annotated[bool, typer.Option(help="fewer steps: a smoke run")] = False,
    workers: WorkersOption = None,
    set_: SetOption = None,
) -> None:
    """Sample efficiency: refit stage-2 methods on fewer image-text pairs, record the points.
    Under torchrun the ranks share embedding and training (DDP); rank 0 writes."""
    from .errors import ConfigError
    from .sweep import run_sweep

    try:
        counts = [int(n) for n in pairs.split(",") if n.strip()]
    except ValueError:
        message = f"--pairs {pairs!r}: use comma-separated integers, e.g. 0,500,2000"
        raise ConfigError(message) from None
    with _torchrun_job(device) as device:
        options = _run_options(
            pair, method, None, split, data_root, output_dir, seed, device, quick, workers, set_
        )
        run_sweep(options, counts, console)


@app.command("leaderboard")
def leaderboard(
    results_dir: ResultsDirOption = Path("results"),
    output_dir: ReportDirOption = Path("leaderboards"),
) -> None:
    """Build leaderboard tables (CSV and Markdown) from the result files."""
    from .report.leaderboard import build_leaderboards

    boards = build_leaderboards(results_dir, output_dir)
    console.print(f"{len(boards.results)} results -> " + ", ".join(map(str, boards.files)))


@app.command("plot")
def plot(
    results_dir: ResultsDirOption = Path("results"),
    output_dir: ReportDirOption = Path("leaderboards"),
) -> None:
    """Draw recall, compatibility-matrix, gain-vs-cost, sweep and training-curve plots."""
    from .report.plots import make_plots

    files = make_plots(results_dir, output_dir)
    console.print(f"wrote {len(files)} plot files to {output_dir / 'plots'}")


@app.command("publish")
def publish(
    results_dir: ResultsDirOption = Path("results"),
    output_dir: ReportDirOption = Path("leaderboards"),
) -> None:
    """Write a static HTML page with the leaderboards and plots (no server needed)."""
    from .report.publish import publish as publish_page

    console.print(f"wrote {publish_page(results_dir, output_dir)}")


QuickOption = Annotated[
    bool,
    typer.Option(
        "--quick", help="quick builds (few steps, small data; for tests; env XBT_BENCH_ZOO_QUICK)"
    ),
]


@zoo_app.command("build")
def zoo_build(
    names: Annotated[
        list[str] | None, typer.Argument(help="toy models to build (default: all)")
    ] = None,
    quick: QuickOption = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads for torch (default: torch's; 1 on a busy machine)"),
    ] = None,
) -> None:
    """Train the toy models that are not built yet; an interrupted build resumes. Under
    torchrun the ranks train each model together (DDP, gloo); rank 0 writes."""
    import torch

    from .distributed import init_distributed, is_main, shutdown_distributed
    from .models.toy_zoo import zoo_entry, zoo_names

    if threads is not None:
        torch.set_num_threads(threads)
    init_distributed("gloo")  # toy models train on the CPU, also on a GPU machine
    try:
        entries = [zoo_entry(name, quick or None) for name in names or zoo_names()]
        _build_toy_models(entries, console if is_main() else Console(quiet=True))
    finally:
        shutdown_distributed()


def _build_toy_models(entries: list[ZooEntry], out: Console) -> None:
    """Build the ``entries`` rank 0 does not have yet, printing to ``out``."""
    import time

    from .distributed import broadcast_object
    from .models.toy_zoo import build

    built = broadcast_object([entry.is_built for entry in entries])  # rank 0 decides for all
    todo = [entry for entry, done in zip(entries, built, strict=True) if not done]
    for entry, done in zip(entries, built, strict=True):
        if done:
            out.print(f"{entry.name}: cached ({entry.folder})")
    if not todo:
        out.print(f"all {len(entries)} toy models are cached; nothing to build")
        return
    started = time.perf_counter()
    for entry in todo:
        try:
            card = build(entry)
        except KeyboardInterrupt:
            err_console.print(
                f"interrupted while building {entry.name}; rerun `xbt-bench zoo build` to "
                "resume from its last checkpoint"
            )
            raise typer.Exit(130) from None
        recall, geometry = card["retrieval"], card["geometry"]
        out.print(
            f"{entry.name}: built in {card['build_time_s']:.0f} s -> {entry.folder}\n"
            f"  test R@1 t2i {recall['t2i_r1']:.1f} i2t {recall['i2t_r1']:.1f}; "
            f"gap {geometry['modality_gap']:.2f}, matched cosine {geometry['matched_cosine']:.2f}"
        )
    out.print(f"built {len(todo)} toy model(s) in {time.perf_counter() - started:.0f} s")


@zoo_app.command("list")
def zoo_list(quick: QuickOption = False) -> None:
    """Show each toy model: built or not, its size, test retrieval, geometry and path."""
    from .models.toy_zoo import zoo_entry, zoo_names

    table = Table(title="Toy models (R@1 and geometry on the toy test split)")
    columns = ("model", "built", "dim", "towers", "tau", "R@1 t2i/i2t", "match", "gap", "intra i/t")
    for column in columns:
        table.add_column(column, no_wrap=column in ("model", "built"), overflow="fold")
    paths = []
    for name in zoo_names():
        entry = zoo_entry(name, quick or None)
        vision, text = entry.model_config["vision_cfg"], entry.model_config["text_cfg"]
        settings = entry.settings
        card = entry.card() if entry.is_built else None
        row = [
            name,
            "yes" if card else "no",
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
        table.add_row(*row)
        paths.append(f"{name}: {entry.weights_path if card else entry.folder}")
    console.print(table)
    console.print("towers: width x layers (/patch px); tau~ = learned temperature")
    console.print("\n".join(paths), soft_wrap=True, highlight=False)


@app.command("embed")
def embed_command(
    model: Annotated[str, typer.Argument(help="model reference, e.g. ViT-B-32:openai")],
    dataset: Annotated[str, typer.Option(help="dataset name")] = "toy-shapes",
    split: Annotated[str, typer.Option(help="split to embed")] = "test",
    side: Annotated[str, typer.Option(help="image, text or both")] = "both",
    data_root: DataRootOption = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size (default per side)")] = None,
    num_workers: Annotated[int | None, typer.Option(help="image-loading workers")] = None,
) -> None:
    """Embed a split into the embedding cache; under torchrun the rows are split across ranks."""
    from .data.registry import load_dataset
    from .distributed import init_distributed, shutdown_distributed
    from .embed.sharded import embed_split_sharded
    from .models.loading import load_model

    sides = ("image", "text") if side == "both" else (side,)
    if any(s not in ("image", "text") for s in sides):
        raise XbtError(f"--side {side!r} is not one of image, text, both")
    info = init_distributed()
    try:
        loaded = load_model(model, device=info.device)
        data = load_dataset(dataset, split, data_root)
        for name in sides:
            array = embed_split_sharded(
                loaded, data, name, batch_size=batch_size, num_workers=num_workers
            )
            if info.is_main:
                console.print(f"{data.key} {name}s: {array.shape[0]}x{array.shape[1]} cached")
    finally:
        shutdown_distributed()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 1, with no traceback."""
    from pydantic import ValidationError

    try:
        app(args=argv, prog_name="xbt-bench")
    except XbtError as error:
        err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        err_console.print(f"[red]error:[/red] {field}: {first['msg']}", soft_wrap=True)
        sys.exit(1)
