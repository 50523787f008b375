"""The names the recipe gives data: data file suffixes, inline templates, the rated row formats.
This module imports only the standard library."""

from __future__ import annotations

PACKAGE_PREFIX = "package:"


def is_template_text(value: str) -> bool:
    """A Jinja template given inline rather than a file name: it has Jinja delimiters."""
    return "{{" in value or "{%" in value


# The data files rmrun reads (rmrun.data.formats picks the reader by these), and the
# compression suffixes fsspec undoes on the fly; a directory or glob in data.train or
# data.eval expands to the files whose names end so.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
# Row formats of rated responses, made into pairs by data.pair_rule (rmrun/data/rated.py).
RATED_FORMATS = ("rated", "ultrafeedback", "helpsteer2")
DEFAULT_RATING = {"rated": "score", "ultrafeedback": "overall_score", "helpsteer2": "helpfulness"}


def is_data_file_name(name: str) -> bool:
    """A file name rmrun reads as data: ``.jsonl``, ``.json`` or ``.parquet``, maybe compressed."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return lower.endswith(DATA_FILE_SUFFIXES)
