"""The ``xbt-bench`` command line: thin wrappers that parse options and call the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

# Set before huggingface_hub is imported anywhere: progress bars and telemetry only.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import typer
from rich.console import Console
from rich.table import Table

from .errors import XbtError

console = Console()
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
    split: Annotated[list[str] | None, typer.Option(help="evaluation split (repeatable)")] = None,
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
