"""The file types ingestion reads, and guessing one from a file name."""

from __future__ import annotations

from pathlib import PurePosixPath

TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
JSON = "application/json"
CSV = "text/csv"
PDF = "application/pdf"

SUPPORTED = (TEXT, MARKDOWN, HTML, JSON, CSV, PDF)

_BY_EXTENSION = {
    ".txt": TEXT,
    ".text": TEXT,
    ".log": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".json": JSON,
    ".csv": CSV,
    ".pdf": PDF,
}

# Other spellings clients send for the same types.
_ALIASES = {
    "text/x-markdown": MARKDOWN,
    "application/xhtml+xml": HTML,
    "application/csv": CSV,
    "text/json": JSON,
    "application/x-pdf": PDF,
}


def normalise(media_type: str) -> str:
    """``media_type`` without parameters (``; charset=...``), lower case, aliases resolved."""
    bare = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def from_file_name(file_name: str) -> str | None:
    """The type a file name's extension implies, or None when it implies none we read."""
    return _BY_EXTENSION.get(PurePosixPath(file_name).suffix.lower())


def is_supported(media_type: str) -> bool:
    return media_type in SUPPORTED
