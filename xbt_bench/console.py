"""One-line warnings to the user (stderr), for library code that must say what it did."""

from __future__ import annotations

from rich.console import Console


def warn(message: str) -> None:
    """Print ``message`` as one yellow line on stderr."""
    Console(stderr=True).print(f"[yellow]{message}[/yellow]", highlight=False, soft_wrap=True)
