"""CSV that a spreadsheet opens as data: a text cell starting with ``=``, ``+``, ``-`` or ``@``
(or a tab or carriage return) would run as a formula, so it gets a leading ``'``, the quote
spreadsheets read as "text". Numbers, and text that reads as a plain number (``-0.5``), are
written as they are."""

from __future__ import annotations

import re

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def neutralise_cell(value: object) -> object:
    """``value`` with ``'`` in front when it is text that a spreadsheet would run as a
    formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def spreadsheet_csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text (no index) with every text cell and header neutralised
    (:func:`neutralise_cell`)."""
    safe = frame.rename(columns=lambda name: neutralise_cell(str(name)))
    text_columns = [c for c in safe.columns if not pd.api.types.is_numeric_dtype(safe[c])]
    for column in text_columns:
        safe[column] = safe[column].map(neutralise_cell)
    return safe.to_csv(index=False)
