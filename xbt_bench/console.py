"""One-line warnings to the user (stderr), for library code that must say what it did."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def warn(message: str) -> None:
    """Print ``message`` as one yellow line on stderr (as written: brackets in it are text,
    not rich markup)."""
    Console(stderr=True).print(
        f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True
    )
