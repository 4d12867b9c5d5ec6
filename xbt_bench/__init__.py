"""xbt-bench: benchmark suite for backward-compatible upgrades of vision-language models."""

__version__ = "0.1.0"
