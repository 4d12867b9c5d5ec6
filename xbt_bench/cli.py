"""The ``xbt-bench`` command line: thin wrappers that parse options and call the library."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

# Set before huggingface_hub is imported anywhere: progress bars and telemetry only.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import typer
from rich.console import Console
from rich.markup import escape

from .errors import XbtError, validation_message
from .paths import RESULTS_DIR, default_report_dir

if TYPE_CHECKING:
    from .options import RunOptions
    from .toy.zoo import ZooEntry

# Piped or logged output keeps whole numbers in the summary tables (rich would wrap it at 80).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)

app = typer.Typer(
    name="xbt-bench",
    help="Benchmark backward-compatible upgrades of CLIP models (XBT and its rivals).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def global_options(
    allow_outside_root: Annotated[
        bool,
        typer.Option(
            "--allow-outside-root",
            help="let dataset annotation rows name images outside their dataset's folder "
            "(absolute paths, '..'); refused by default",
        ),
    ] = False,
) -> None:
    """Options of every command (given before it: xbt-bench --allow-outside-root run ...)."""
    if allow_outside_root:
        from .data.folder import OUTSIDE_ROOT_ENV

        os.environ[OUTSIDE_ROOT_ENV] = "1"  # also seen by data-loader workers


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
    help="Toy open_clip models of the toy world (model_zoo/models: configs, recipes, weights).",
    no_args_is_help=True,
)
app.add_typer(zoo_app, name="zoo")


@pairs_app.command("list")
def pairs_list() -> None:
    """Show every registered pair as a table; a pair file that does not parse is skipped
    with one line saying why."""
    from .console import warn
    from .pairs import pair_registry, parse_pair_file, shadowed_pairs
    from .report.tables import pairs_table

    registry = pair_registry()
    specs, notes = [], []
    for name in registry.names():
        try:
            spec = parse_pair_file(registry.get(name))
        except XbtError as error:
            warn(f"skipped a pair file: {error}")
            continue
        hidden = shadowed_pairs(name)
        specs.append((spec, bool(hidden)))
        notes += [f"* {name}: {registry.get(name)} replaces {path}" for path in hidden]
    console.print(pairs_table(specs))
    if notes:
        console.print("\n".join(notes), markup=False, highlight=False, soft_wrap=True)


@pairs_app.command("show")
def pairs_show(name: Annotated[str, typer.Argument(help="pair name, e.g. toy-s-to-m")]) -> None:
    """Print one pair's file (validated) and where it lives."""
    from .pairs import load_pair, pair_registry

    spec = load_pair(name)
    console.print(f"[bold]{spec.name}[/bold]  ({escape(str(pair_registry().get(spec.name)))})")
    console.print(spec.to_toml(), markup=False, highlight=False)


@pairs_app.command("add")
def pairs_add(
    name: Annotated[str, typer.Argument(help="new pair name (a safe file name)")],
    old: Annotated[
        str | None, typer.Option(help="OLD model reference, e.g. ViT-B-32:openai")
    ] = None,
    new: Annotated[
        str | None, typer.Option(help="NEW model reference, e.g. ViT-L-14:openai")
    ] = None,
    description: Annotated[
        str | None, typer.Option(help="one line saying what the upgrade is")
    ] = None,
    from_embeddings: Annotated[
        Path | None,
        typer.Option(
            "--from-embeddings",
            help="a folder of stored embeddings (old/ and new/, as `xbt-bench embeddings dump` "
            "writes them): the pair reads them instead of running models",
        ),
    ] = None,
    dataset: Annotated[
        str, typer.Option(help="default evaluation dataset, e.g. folder:/data/photos")
    ] = "toy-shapes",
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
    """Write a validated pair file from flags, or (--from-embeddings DIR) one that reads the
    stored embeddings in DIR: its splits, text corpus and support split come from DIR. Toy
    models named with zoo:NAME must exist; real models on the toy data are said so in one
    line."""
    from .data.registry import dataset_info
    from .errors import ConfigError
    from .models.refs import parse_model_ref
    from .pairs import DataRefs, PairSpec, embeddings_pair, write_pair
    from .paths import home
    from .toy.zoo import zoo_entry

    if from_embeddings is not None:
        if old or new or via:
            raise ConfigError(
                "--from-embeddings takes OLD and NEW from the folder (old/, new/); drop "
                "--old, --new and --via"
            )
        spec = embeddings_pair(name, from_embeddings, description)
        path = write_pair(spec, directory or home() / "pairs", overwrite=force)
        console.print(f"wrote {path}", markup=False, highlight=False)
        return
    if old is None or new is None or description is None:
        raise ConfigError(
            "pairs add needs --old, --new and --description (or --from-embeddings DIR)"
        )
    spec = PairSpec(
        name=name,
        description=description,
        old=old,
        new=new,
        via=via or [],
        dataset=dataset,
        splits=split or dataset_info(dataset).evaluation_splits,
        data=DataRefs(text=text, pairs=pairs, support=support),
    )
    refs = [parse_model_ref(ref) for ref in spec.chain]
    for ref in refs:
        if ref.kind == "zoo":
            zoo_entry(ref.name)  # NotFoundError with the closest toy model's name
    path = write_pair(spec, directory or home() / "pairs", overwrite=force)
    console.print(f"wrote {path}", markup=False, highlight=False)
    toy_data = [ref for ref in (dataset, text, pairs, support) if ref.startswith("toy-shapes")]
    real = [ref.text for ref in refs if ref.kind != "zoo"]
    if real and toy_data:
        err_console.print(
            f"[yellow]warning: {escape(', '.join(real))} will be trained and scored on the toy "
            f"world's synthetic shapes ({escape(', '.join(toy_data))}); give --dataset, --text, "
            "--pairs and --support your data (README: Your own models and data)[/yellow]",
            highlight=False,
            soft_wrap=True,
        )


@pairs_app.command("diagnose")
def pairs_diagnose(
    name: Annotated[str, typer.Argument(help="pair name, e.g. toy-s-to-m")],
    split: Annotated[
        str | None, typer.Option(help="evaluation split (default: the pair's first)")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="evaluation dataset")] = None,
    data_root: DataRootOption = None,
    results_dir: ResultsDirOption = RESULTS_DIR,
) -> None:
    """How alike the pair's OLD and NEW are on a split, before any method runs: modality gaps,
    CKA, how well a text-fitted rotation maps NEW onto OLD (texts, and transferred to images),
    and NEW's capability gain."""
    from .diagnose import diagnose_pair
    from .pairs import load_pair
    from .report.tables import diagnostics_table

    report = diagnose_pair(load_pair(name), split, dataset, data_root)
    console.print(diagnostics_table(report))
    console.print(f"wrote {report.save(results_dir)}", markup=False, highlight=False)


@models_app.command("info")
def models_info(
    ref: Annotated[str, typer.Argument(help="model reference, e.g. ViT-B-32:openai or zoo:toy-s")],
) -> None:
    """Load a model through the loader and print its embedding size and identity."""
    from .models.loading import load_model
    from .models.stored import StoredModel

    loaded = load_model(ref)
    console.print(f"{ref}: embed_dim={loaded.embed_dim} identity={loaded.identity}", markup=False)
    if isinstance(loaded, StoredModel):
        splits = ", ".join(loaded.splits)
        console.print(f"stored embeddings: {loaded.folder} (splits: {splits})", markup=False)
    else:
        console.print(f"weights: {loaded.weights_path}", markup=False)


@datasets_app.command("list")
def datasets_list() -> None:
    """Show every dataset name (and name pattern), its splits and the files it needs."""
    from .report.tables import datasets_table

    console.print(datasets_table())


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
    console.print(f"[bold]{escape(found.key)}[/bold]: ok", highlight=False)
    for label, value in found.sources.items():
        console.print(f"  {label}: {value}", markup=False, highlight=False, soft_wrap=True)
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
    from .report.tables import methods_table

    console.print(methods_table())
    console.print("variants run only when named: xbt-bench run --pair P --method NAME")


@methods_app.command("show")
def methods_show(name: Annotated[str, typer.Argument(help="method name, e.g. xbt")]) -> None:
    """Show one method's settings with their defaults (set them in a pair file's
    \\[methods.NAME] table or with ``xbt-bench run --set KEY=VALUE``)."""
    from rich.markup import escape

    from .methods import methods
    from .report.tables import search_table, settings_table

    method = methods.get(name)
    console.print(f"[bold]{escape(method.name)}[/bold]: {escape(method.notes)}")
    table = settings_table(name)
    console.print(table if table.rows else "(no settings)")
    if method.search is not None:
        console.print(search_table(name))


# --- issue 22: the options `cost` and `decide` share ---
HardwareOption = Annotated[
    Path | None,
    typer.Option(help="TOML file of one device's rates (and price); default: the rates "
                 "measured on the run's device (README: Cost and decision)"),
]
DirectionOption = Annotated[
    str, typer.Option(help="directions served: both, t2i (image gallery), i2t (caption gallery)")
]
CaptionsOption = Annotated[
    float | None,
    typer.Option(min=0, help="captions per gallery item (default: the evaluated dataset's)"),
]
QueriesOption = Annotated[float, typer.Option(min=0, help="queries served per day")]
ImageShareOption = Annotated[
    float, typer.Option(min=0, max=1, help="share of the queries that are image queries (both)")
]
IndexOption = Annotated[str, typer.Option(help="index rebuilt after a backfill: ivf or hnsw")]
AllowQuickOption = Annotated[
    bool,
    typer.Option(
        "--allow-quick", help="estimate from --quick results too (a smoke run's training time "
        "and throughputs; refused by default)"
    ),
]
ResultsDirOption = Annotated[
    Path,
    typer.Option(
        "--results-dir", help="folder of result files (<pair>/<dataset>/<method>.json); "
        "default out/results (--quick runs: out/quick/results)"
    ),
]
ReportDirOption = Annotated[
    Path | None,
    typer.Option(
        "--report-dir", "--output-dir", help="folder for tables, plots and the page (default: "
        "out/leaderboards, or out/quick/leaderboards for out/quick/results)"
    ),
]


def _parse_overrides(
    values: list[str] | None, option: str = "--set", example: str = "lora_rank=8"
) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a dict, values parsed as JSON where they parse (3, 0.5, true)."""
    import json

    from .errors import ConfigError

    overrides: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: use KEY=VALUE, e.g. {option} {example}")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


SplitOption = Annotated[list[str] | None, typer.Option(help="evaluation split (repeatable)")]
DataRootOption = Annotated[Path | None, typer.Option(help="root folder of on-disk datasets")]
ResultsOption = Annotated[
    Path | None,
    typer.Option(
        "--results-dir", "--output-dir", help="where result files go (default: out/results, "
        "--quick runs out/quick/results; never the committed results/ unless named)"
    ),
]
SeedOption = Annotated[int, typer.Option(help="seed of every random choice (the first seed)")]
SeedsOption = Annotated[
    int,
    typer.Option(
        "--seeds", min=1, help="run each trained method with this many seeds (seed, seed+1, ...): "
        "results keep each seed's metrics, their mean and std"
    ),
]
DeviceOption = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1")]
WorkersOption = Annotated[
    int | None, typer.Option(min=0, help="data-loader workers (default: up to 4)")
]
OBJECTIVE_HELP_TEXT = (
    "what a trial maximises on support: rsum (default); cells (recall cells above old→old, ties "
    "by rsum); or one recall such as t2i_r1"
)
TunedFromOption = Annotated[
    Path | None,
    typer.Option(help="results folder whose <pair>/tuned/<method>.json settings to use "
                 "(default: the output folder)"),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="method setting KEY=VALUE for every method that has it"),
]


def _run_options(args: dict[str, Any]) -> RunOptions:
    """RunOptions from a command's arguments (its ``locals()``): the options that ``run``,
    ``backfill`` and ``sweep`` share, under their command-line names (``method``, ``split``,
    ``seeds``, ``workers``, ``set_``), checked before any work."""
    from .options import RunOptions, index_specs

    return RunOptions(
        pair=args["pair"],
        methods=args["method"] or [],
        dataset=args.get("dataset"),
        splits=args["split"] or [],
        data_root=args["data_root"],
        output_dir=args["output_dir"],
        seed=args["seed"],
        n_seeds=args.get("seeds", 1),
        device=args["device"],
        quick=args["quick"],
        num_workers=args["workers"],
        overrides=_parse_overrides(args["set_"]),
        tuned_from=args.get("tuned_from"),
        indexes=index_specs(
            args.get("index") or [],
            _parse_overrides(args.get("index_param"), "--index-param", "nprobe=16"),
        ),
    )


@contextmanager
def _torchrun_job(device: str) -> Iterator[str]:
    """Join the torchrun job (if launched by one) for the command's duration; yields the device
    to use: NCCL with GPU LOCAL_RANK per process for a CUDA ``device``, gloo otherwise."""
    from .distributed import check_device, init_distributed, shutdown_distributed

    info = init_distributed("nccl" if check_device(device).startswith("cuda") else "gloo")
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
    output_dir: ResultsOption = None,
    seed: SeedOption = 0,
    seeds: SeedsOption = 1,
    device: DeviceOption = "cpu",
    quick: Annotated[bool, typer.Option(help="fewer steps and pairs: a smoke run")] = False,
    workers: WorkersOption = None,
    set_: SetOption = None,
    tuned_from: TunedFromOption = None,
    backfill: Annotated[
        bool,
        typer.Option(help="also record partial-backfill curves (as `xbt-bench backfill`)"),
    ] = False,
    index: Annotated[
        list[str] | None,
        typer.Option(help="also score through a production FAISS index of each gallery, trained "
                     "on its vectors: flat, ivf, hnsw or ivfpq (repeatable); written beside the "
                     "exact result as <method>.index-KIND.json"),
    ] = None,
    index_param: Annotated[
        list[str] | None,
        typer.Option("--index-param", help="index parameter KEY=VALUE (nlist, nprobe, M, "
                     "efSearch, pq_m, pq_nbits) for every --index that has it; default: from "
                     "the gallery's size"),
    ] = None,
) -> None:
    """Run a pair end to end: embed, fit every method, score every setting, write results
    (with --backfill also the partial-backfill curves, as `xbt-bench backfill` writes them;
    with --index also the recalls through production indexes next to exact search).
    Under torchrun the ranks share the embedding and the training (DDP); rank 0 writes."""
    from .backfill import run_backfill
    from .eval.backfill import DEFAULT_FRACTIONS
    from .options import check_backfill
    from .pairs import load_pair
    from .runner import run

    if backfill:
        check_backfill(load_pair(pair), DEFAULT_FRACTIONS)  # before any work
    with _torchrun_job(device) as device:
        options = _run_options(locals())
        runner = run(options, console)
        if backfill:
            run_backfill(options, DEFAULT_FRACTIONS, console, runner)
        _say_where(options)


def _say_where(options: RunOptions) -> None:
    """Where a command's results went and how to publish them (quick runs: marked as such);
    under torchrun rank 0 says it."""
    from .distributed import is_main

    if not is_main():
        return
    where = options.output_dir
    publish = "xbt-bench publish" + (f" --results-dir {where}" if where != RESULTS_DIR else "")
    kind = "quick-run results (a smoke run, kept apart)" if options.quick else "results"
    console.print(f"{kind} in {where}/; tables, plots and the page: {publish}", highlight=False,
                  soft_wrap=True)  # fmt: skip


def _percentages(text: str, option: str) -> list[float]:
    """``"0,10,25"`` -> [0.0, 0.1, 0.25] (sorted, unique); ConfigError naming ``option``
    unless every value is a percentage between 0 and 100."""
    from .errors import ConfigError

    hint = f"{option} {text!r}: use comma-separated percentages, e.g. 0,10,25,50,75,100"
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(hint) from None
    if not values or any(not 0 <= value <= 100 for value in values):  # NaN fails too
        raise ConfigError(hint)
    return sorted({value / 100 for value in values})


@app.command("backfill")
def backfill_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    method: Annotated[
        list[str] | None,
        typer.Option(help="method whose queries search the OLD part (repeatable; default: all "
                     "but variants)"),
    ] = None,
    fractions: Annotated[
        str, typer.Option("--fractions", help="percentages of the gallery re-embedded with NEW")
    ] = "0,10,25,50,75,100",
    split: SplitOption = None,
    data_root: DataRootOption = None,
    output_dir: ResultsOption = None,
    seed: SeedOption = 0,
    seeds: SeedsOption = 1,
    device: DeviceOption = "cpu",
    quick: Annotated[bool, typer.Option(help="fewer steps and pairs: a smoke run")] = False,
    workers: WorkersOption = None,
    set_: SetOption = None,
    tuned_from: TunedFromOption = None,
) -> None:
    """Partial backfill: recall when a share of the gallery is re-embedded with NEW (its items
    searched with NEW's queries, the rest with each method's), per method and order; each
    method's curves go to its own file, <method>.backfill.json (the methods are fitted as `run`
    fits them: cached work is reused)."""
    from .backfill import run_backfill
    from .options import check_backfill
    from .pairs import load_pair

    shares = _percentages(fractions, "--fractions")
    check_backfill(load_pair(pair), shares)  # before any work
    with _torchrun_job(device) as device:
        options = _run_options(locals())
        run_backfill(options, shares, console)
        _say_where(options)


@app.command("cost")
def cost_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    gallery_size: Annotated[
        int, typer.Option(min=1, help="items in the deployed gallery (e.g. 100000000)")
    ],
    hardware: HardwareOption = None,
    direction: DirectionOption = "both",
    captions_per_item: CaptionsOption = None,
    queries_per_day: QueriesOption = 0.0,
    image_query_share: ImageShareOption = 0.5,
    rebuild_index: IndexOption = "ivf",
    fractions: Annotated[
        str, typer.Option("--fractions", help="percentages for the partial-backfill rows")
    ] = "10,25,50,75",
    results_dir: ResultsDirOption = RESULTS_DIR,
    allow_quick: AllowQuickOption = False,
) -> None:
    """The whole bill of each way of upgrading a gallery of N items: what it re-embeds (gallery
    images and captions, training texts and pairs), trains, rebuilds (FAISS index), stores, and
    costs per query, from one device profile (measured on the run's device, or --hardware)."""
    from .report.cost import (
        bill,
        bill_inputs,
        bill_parts,
        bills_frame,
        full_result_set,
        throughput_doubts,
        upgrade_ways,
    )
    from .report.tables import frame_table
    from .results import load_result_set

    found = full_result_set(load_result_set(results_dir), pair, allow_quick)
    inputs = bill_inputs(
        found, pair, gallery_size, hardware, direction, captions_per_item, queries_per_day,
        image_query_share, index=rebuild_index,
    )  # fmt: skip
    shares = _percentages(fractions, "--fractions")
    ways = upgrade_ways(found, pair, shares)
    bills = [bill(way, inputs.scale, inputs.profile, inputs.gallery) for way in ways]
    title = f"The upgrade bill of {pair} on {inputs.profile.label} (ESTIMATE)"
    for part, frame in bill_parts(bills_frame(bills, inputs.profile, inputs.scale)):
        console.print(frame_table(frame, f"{title}: {part}"))
    for line in inputs.footer(f for item in bills for f in item.figures()):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    _print_doubts(inputs.profile, throughput_doubts(found.runs, pair))


def _print_doubts(profile: Any, doubts: dict[str, str]) -> None:
    """Say, in yellow, which measured rates of ``profile`` are doubtful and why."""
    for key, doubt in doubts.items():
        if profile.measured and key in profile.rates:
            console.print(f"  [yellow]{key}: {escape(doubt)}[/yellow]", highlight=False,
                          soft_wrap=True)  # fmt: skip


@app.command("decide")
def decide_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    gallery_size: Annotated[
        int, typer.Option(min=1, help="items in the deployed gallery (e.g. 100000000)")
    ],
    queries_per_day: QueriesOption = 0.0,
    hardware: HardwareOption = None,
    horizon_days: Annotated[
        float, typer.Option(min=0, help="days the total cost covers (one-off work + queries)")
    ] = 365.0,
    direction: DirectionOption = "both",
    captions_per_item: CaptionsOption = None,
    image_query_share: ImageShareOption = 0.5,
    rebuild_index: IndexOption = "ivf",
    top: Annotated[int, typer.Option(min=0, help="ways shown (0: all)")] = 8,
    results_dir: ResultsDirOption = RESULTS_DIR,
    allow_quick: AllowQuickOption = False,
) -> None:
    """A ranked recommendation for upgrading PAIR: every way (full backfill, each method,
    partial backfills) with its recall per direction (95% interval), one-off cost, added query
    latency and cost per day, storage, whether OLD keeps running, and why it ranks there."""
    from .report.cost import bill_inputs, full_result_set, throughput_doubts
    from .report.decide import RANK_RULE, card_lines, decide, recommendation, today_line
    from .results import load_result_set

    found = full_result_set(load_result_set(results_dir), pair, allow_quick)
    inputs = bill_inputs(
        found, pair, gallery_size, hardware, direction, captions_per_item, queries_per_day,
        image_query_share, horizon_days, rebuild_index,
    )  # fmt: skip
    options = decide(found, pair, inputs.scale, inputs.profile)
    console.print(
        f"Decision card: {pair} on {inputs.profile.label} (ESTIMATE), horizon "
        f"{horizon_days:g} days", markup=False, highlight=False, soft_wrap=True, style="bold",
    )  # fmt: skip
    lines = [
        today_line(found, pair, inputs.scale),
        *card_lines(options, inputs.scale, inputs.profile, top),
        recommendation(options),
        RANK_RULE,
        *inputs.footer(f for o in options for f in (*o.bill.figures(), o.total)),
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    _print_doubts(inputs.profile, throughput_doubts(found.runs, pair))


@app.command("sweep")
def sweep_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    method: Annotated[
        list[str] | None,
        typer.Option(help="method that trains on image-text pairs (repeatable; default: all "
                     "but variants)"),
    ] = None,
    pairs: Annotated[
        str, typer.Option("--pairs", help="comma-separated numbers of image-text pairs")
    ] = "0,500,2000,8000",
    split: SplitOption = None,
    data_root: DataRootOption = None,
    output_dir: ResultsOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "cpu",
    quick: Annotated[bool, typer.Option(help="fewer steps: a smoke run")] = False,
    workers: WorkersOption = None,
    set_: SetOption = None,
    tuned_from: TunedFromOption = None,
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
        options = _run_options(locals())
        run_sweep(options, counts, console)
        _say_where(options)


RankQuickOption = Annotated[
    bool,
    typer.Option(
        "--rank-quick", help="rank --quick results together with full ones (still marked); by "
        "default they get tables of their own"
    ),
]


@app.command("tune")
def tune_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    method: Annotated[
        list[str] | None,
        typer.Option(help="trained method to tune (repeatable; default: every tunable method "
                     "but the variants)"),
    ] = None,
    trials: Annotated[int, typer.Option(min=1, help="fits per method (the budget)")] = 12,
    max_steps: Annotated[
        int, typer.Option(min=1, help="most stage-2 training steps a trial may take (budget)")
    ] = 600,
    max_proj_steps: Annotated[
        int, typer.Option(min=1, help="most stage-1 training steps a trial may take (budget)")
    ] = 3000,
    objective: Annotated[str, typer.Option(help=OBJECTIVE_HELP_TEXT)] = "rsum",
    data_root: DataRootOption = None,
    output_dir: ResultsOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "cpu",
    quick: Annotated[bool, typer.Option(help="fewer steps and pairs: a smoke run")] = False,
    workers: WorkersOption = None,
    set_: SetOption = None,
) -> None:
    """Search a trained method's settings on the pair's support split (never test): an Optuna
    study with a seeded TPE sampler under $XBT_BENCH_HOME/tune (an interrupted tune resumes),
    trial 0 being the method's configured settings. The best settings and every trial go to
    <output-dir>/<pair>/tuned/<method>.json, which `xbt-bench run` then uses (and says so)."""
    from .results import Budget
    from .tune import run_tune

    split = None  # a tune reads no evaluation split
    budget = Budget(trials=trials, max_steps=max_steps, max_proj_steps=max_proj_steps)
    with _torchrun_job(device) as device:
        run_tune(_run_options(locals()), budget, objective, console)


@app.command("leaderboard")
def leaderboard(
    results_dir: ResultsDirOption = RESULTS_DIR,
    output_dir: ReportDirOption = None,
    rank_quick: RankQuickOption = False,
) -> None:
    """Build leaderboard tables (CSV and Markdown) from the result files."""
    from .report.leaderboard import build_leaderboards

    output_dir = output_dir or default_report_dir(results_dir)
    boards = build_leaderboards(results_dir, output_dir, rank_quick)
    console.print(
        f"{len(boards.results)} results -> " + ", ".join(map(str, boards.files)), markup=False
    )


@app.command("plot")
def plot(
    results_dir: ResultsDirOption = RESULTS_DIR,
    output_dir: ReportDirOption = None,
    rank_quick: RankQuickOption = False,
) -> None:
    """Draw recall, compatibility-matrix, gain-vs-cost, sweep and training-curve plots."""
    from .report.plots import make_plots

    output_dir = output_dir or default_report_dir(results_dir)
    files = make_plots(results_dir, output_dir, rank_quick)
    console.print(f"wrote {len(files)} plot files to {output_dir / 'plots'}", markup=False)


@app.command("publish")
def publish(
    results_dir: ResultsDirOption = RESULTS_DIR,
    output_dir: ReportDirOption = None,
    rank_quick: RankQuickOption = False,
) -> None:
    """Write a static HTML page with the leaderboards and plots (no server needed)."""
    from .report.publish import publish as publish_page

    path = publish_page(results_dir, output_dir or default_report_dir(results_dir), rank_quick)
    console.print(
        f"wrote {path}; open file://{path.resolve()} in a browser", markup=False, soft_wrap=True
    )


QuickOption = Annotated[
    bool,
    typer.Option(
        "--quick", help="the quick recipes (few steps, small data: checks the build path)"
    ),
]


@zoo_app.command("build")
def zoo_build(
    names: Annotated[
        list[str] | None, typer.Argument(help="toy models to build (default: all)")
    ] = None,
    quick: QuickOption = False,
    ship: Annotated[
        bool,
        typer.Option(help="copy the builds into model_zoo/models as the shipped fp16 weights"),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads for torch (default: torch's; 1 on a busy machine)"),
    ] = None,
) -> None:
    """Rebuild toy models from their recipes into the cache (an interrupted build resumes).
    The shipped weights stay what zoo:NAME loads unless --ship replaces them. Under torchrun the
    ranks train each model together (DDP, gloo); rank 0 writes."""
    import torch

    from .distributed import init_distributed, is_main, shutdown_distributed
    from .toy.zoo import zoo_entry, zoo_names

    if threads is not None:
        torch.set_num_threads(threads)
    if ship and quick:
        raise XbtError("--ship copies full builds into the model zoo; quick builds are for tests")
    init_distributed("gloo")  # toy models train on the CPU, also on a GPU machine
    try:
        entries = [zoo_entry(name, quick) for name in names or zoo_names()]
        out = console if is_main() else Console(quiet=True)
        _build_toy_models(entries, out)
        if ship and is_main():
            from .toy.build import ship as ship_weights

            for entry in entries:
                out.print(f"{entry.name}: shipped {ship_weights(entry)}", highlight=False)
    finally:
        shutdown_distributed()


def _build_toy_models(entries: list[ZooEntry], out: Console) -> None:
    """Build the ``entries`` rank 0 has no build of yet, printing to ``out`` how each compares
    with its shipped weights."""
    import time

    from .distributed import broadcast_object
    from .toy.build import build

    built = broadcast_object([entry.is_built for entry in entries])  # rank 0 decides for all
    todo = [entry for entry, done in zip(entries, built, strict=True) if not done]
    for entry, done in zip(entries, built, strict=True):
        if done:
            out.print(f"{entry.name}: cached ({entry.folder})", highlight=False)
    if not todo:
        out.print(f"all {len(entries)} toy models are cached; nothing to build")
        return
    started = time.perf_counter()
    for entry in todo:
        card = build(entry)
        recall, geometry = card["retrieval"], card["geometry"]
        out.print(
            f"{entry.name}: built in {card['build_time_s']:.0f} s -> {entry.folder}\n"
            f"  test R@1 t2i {recall['t2i_r1']:.1f} i2t {recall['i2t_r1']:.1f}; "
            f"gap {geometry['modality_gap']:.2f}, matched cosine {geometry['matched_cosine']:.2f}",
            highlight=False,
        )
        shipped = entry.shipped_card()
        if shipped is not None and shipped.get("content_hash") == entry.content_hash:
            theirs = shipped["retrieval"]
            out.print(
                f"  shipped weights: t2i {theirs['t2i_r1']:.1f} i2t {theirs['i2t_r1']:.1f}. "
                "Another machine or thread count rounds floats differently, so a rebuild "
                "differs slightly from the shipped model; zoo:NAME still loads the shipped "
                f"weights (use local-dir:{entry.folder} for this build, or --ship)",
                highlight=False,
            )
    out.print(f"built {len(todo)} toy model(s) in {time.perf_counter() - started:.0f} s")


@zoo_app.command("list")
def zoo_list(quick: QuickOption = False) -> None:
    """Show each toy model: where its weights are, its size, test retrieval and geometry."""
    from .report.tables import ZOO_LEGEND, zoo_table
    from .toy.zoo import zoo_entry, zoo_names

    entries = [zoo_entry(name, quick) for name in zoo_names()]
    console.print(zoo_table(entries))
    console.print(ZOO_LEGEND, highlight=False)
    paths = [f"{e.name}: {e.weights_path if e.card() else e.folder}" for e in entries]
    console.print("\n".join(paths), soft_wrap=True, markup=False, highlight=False)


# --- stored embeddings (issue 23) ---
embeddings_app = typer.Typer(
    help="Stored embeddings as a pair's input (.npy or Parquet + manifest; "
    "docs/embeddings-format.md).",
    no_args_is_help=True,
)
app.add_typer(embeddings_app, name="embeddings")


@embeddings_app.command("dump")
def embeddings_dump(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    output: Annotated[Path, typer.Option(help="folder to write old/ and new/ into")],
    file_format: Annotated[
        str, typer.Option("--format", help="npy (memory-mapped when read) or parquet")
    ] = "npy",
    dtype: Annotated[str, typer.Option(help="float32 or float16")] = "float32",
    data_root: DataRootOption = None,
    device: DeviceOption = "cpu",
    workers: WorkersOption = None,
) -> None:
    """Write OLD's and NEW's embeddings of every split the pair uses (its evaluation splits,
    support, the training pairs and the text corpus) in the stored-embeddings format; register
    them with `xbt-bench pairs add NAME --from-embeddings OUTPUT`."""
    from .distributed import check_device
    from .dump import dump_pair_embeddings
    from .errors import ConfigError
    from .pairs import load_pair

    if file_format not in ("npy", "parquet"):
        raise ConfigError(f"--format {file_format!r} is not one of npy, parquet")
    written = dump_pair_embeddings(
        load_pair(pair),
        output,
        console,
        data_root=data_root,
        device=check_device(device),
        num_workers=workers,
        file_format=file_format,
        dtype=dtype,
    )
    console.print(
        f"wrote {len(written)} split folders under {output}; register them with "
        f"`xbt-bench pairs add NAME --from-embeddings {output}`",
        highlight=False,
        soft_wrap=True,
    )


@app.command("export")
def export_command(
    pair: Annotated[str, typer.Option(help="registered pair, e.g. toy-s-to-m")],
    method: Annotated[str, typer.Option(help="the method whose query encoder to export")],
    output: Annotated[Path, typer.Option(help="the file to write (safetensors)")],
    seed: Annotated[
        int | None, typer.Option(help="which seed's encoder (default: the result's first)")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="the result's dataset (default: the pair's)")
    ] = None,
    results_dir: ResultsDirOption = RESULTS_DIR,
    data_root: DataRootOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Export the query encoder a run result scored (the map, or ψ with LoRA weights, and a
    manifest with the pair, fingerprints, settings and metrics) for a serving system:
    `xbt_bench.load_query_encoder(FILE)`."""
    from .distributed import check_device
    from .errors import NotFoundError
    from .export import export_query_encoder
    from .methods import methods
    from .pairs import load_pair
    from .results import RunResult, path_component

    spec = load_pair(pair)
    name = methods.canonical(method)
    folder = results_dir / path_component(spec.name) / path_component(dataset or spec.dataset)
    path = folder / f"{path_component(name)}.json"
    if not path.is_file():
        raise NotFoundError(
            f"no result {path}; run `xbt-bench run --pair {spec.name} --method {name}` first "
            "(or pass --results-dir)"
        )
    written = export_query_encoder(
        RunResult.from_json(path),
        output,
        console,
        seed=seed,
        device=check_device(device),
        data_root=data_root,
    )
    console.print(f"wrote {written}", highlight=False, soft_wrap=True)


cache_app = typer.Typer(help="The cache under $XBT_BENCH_HOME.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[
        float,
        typer.Option(min=0, help="only what is at least this many hours old (a younger leftover "
                     "may belong to a run still going; 0 removes all)"),
    ] = 1.0,
    dry_run: Annotated[bool, typer.Option(help="list what would be removed")] = False,
) -> None:
    """Remove what interrupted runs left behind: abandoned embedding attempts, temporary files
    of unfinished writes and damaged files set aside; report the space freed."""
    import shutil

    from .atomic import leftovers
    from .embed import EmbeddingCache
    from .paths import home

    def size(path: Path) -> int:
        files = path.rglob("*") if path.is_dir() else [path]
        return sum(p.stat().st_size for p in files if p.is_file())

    min_age = older_than * 3600
    found = [*EmbeddingCache().abandoned_attempts(min_age), *leftovers(home(), min_age)]
    total = 0
    for path in found:
        total += size(path)
        console.print(
            f"{'would remove' if dry_run else 'removed'} {path}", markup=False, highlight=False
        )
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    verb = "would free" if dry_run else "freed"
    console.print(
        f"{len(found)} leftover(s); {verb} {total / 2**20:.1f} MiB under {home()}", markup=False
    )


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
                console.print(
                    f"{data.key} {name}s: {array.shape[0]}x{array.shape[1]} cached", markup=False
                )
    finally:
        shutdown_distributed()


RESUME_HINT = (
    "rerun the same command to resume: finished embeddings, checkpoints and results are kept, "
    "training continues from its last checkpoint"
)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors (bad input, bad options) print one line and exit 1 (2 for a bad
    command line), Ctrl-C says how to resume and exits 130, SIGTERM the same with 143; none
    prints a traceback. Messages are printed as written (brackets in them are not markup)."""
    from pydantic import ValidationError

    # Command-line mistakes are click's UsageError (typer raises it from its own copy of click
    # in recent versions): the base class of typer.BadParameter.
    usage_error = typer.BadParameter.__mro__[1]

    def fail(message: str, code: int) -> None:
        err_console.print(message, highlight=False, soft_wrap=True)
        sys.exit(code)

    terminated: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt  # unwind as Ctrl-C does: checkpoints and caches stay consistent

    # signal handlers can only be set from the main thread
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        code = app(args=argv, prog_name="xbt-bench", standalone_mode=False)
    except XbtError as error:
        fail(f"[red]error:[/red] {escape(str(error))}", 1)
    except ValidationError as error:
        field, message, _ = validation_message(error)
        fail(f"[red]error:[/red] {escape(field)}: {escape(message)}", 1)
    except usage_error as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: show what it offers
            fail(escape(error.format_message()), 0)
        where = error.ctx.command_path if error.ctx is not None else "xbt-bench"
        fail(f"[red]error:[/red] {escape(error.format_message())} (see `{where} --help`)", 2)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    finally:
        if previous is not None:  # None: not set from Python, nothing to restore
            signal.signal(signal.SIGTERM, previous)
    if code == 130 and terminated:
        fail(f"terminated (SIGTERM); {RESUME_HINT}", 143)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        fail(f"interrupted; {RESUME_HINT}", 130)
    sys.exit(code if isinstance(code, int) else 0)
