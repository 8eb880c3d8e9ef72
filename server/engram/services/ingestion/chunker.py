"""Cutting a document's text into overlapping chunks on natural boundaries.

Sizes are in characters: about 1,000 characters (roughly 250 tokens of
English) fill the local MiniLM model's 256-token window without truncation.

The text is first split into pieces no longer than ``max_chars``: paragraphs
(separated by blank lines); a paragraph too long is split into lines, a line
too long into sentences, and a sentence too long at spaces (or, for a run
with no space, hard).  Pieces are then packed greedily into chunks.  When the
next piece does not fit, the chunk ends at its strongest boundary in its
second half (a paragraph break before a line break before a sentence end),
and the next chunk starts with the whole pieces that made up the last
``overlap_chars`` or fewer of the previous one, so that a sentence cut away
from its context is found with it.

Every chunk is an exact slice ``text[start:end]``; the positions let file
tools show a chunk in its document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_MAX_CHARS = 1000
DEFAULT_OVERLAP_CHARS = 200

# Boundary strengths: where a piece starts.
PARAGRAPH, LINE, SENTENCE, WORD = 3, 2, 1, 0

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_LINE_BREAK = re.compile(r"\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ChunkingOptions:
    max_chars: int = DEFAULT_MAX_CHARS
    overlap_chars: int = DEFAULT_OVERLAP_CHARS

    def __post_init__(self) -> None:
        if self.max_chars < 1 or not 0 <= self.overlap_chars < self.max_chars:
            raise ValueError("need max_chars >= 1 and 0 <= overlap_chars < max_chars")


@dataclass(frozen=True)
class Piece:
    start: int
    end: int
    strength: int


@dataclass(frozen=True)
class Chunk:
    """``text`` is ``document[start:end]``."""

    index: int
    start: int
    end: int
    text: str


def _spans(
    text: str, start: int, end: int, separator: re.Pattern[str]
) -> Iterator[tuple[int, int]]:
    """The non-blank stretches of ``text[start:end]`` between matches of ``separator``."""
    position = start
    for match in separator.finditer(text, start, end):
        if match.start() > position:
            yield position, match.start()
        position = match.end()
    if end > position:
        yield position, end


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


_LEVELS = ((_LINE_BREAK, LINE), (_SENTENCE_END, SENTENCE), (_SPACE, WORD))


def _pieces(
    text: str, start: int, end: int, strength: int, level: int, limit: int
) -> Iterator[Piece]:
    """``text[start:end]`` as pieces of at most ``limit`` characters, finest split last."""
    if end - start <= limit:
        yield Piece(start, end, strength)
        return
    if level == len(_LEVELS):
        for offset in range(start, end, limit):
            yield Piece(offset, min(offset + limit, end), strength if offset == start else WORD)
        return
    separator, inner = _LEVELS[level]
    first = True
    for span_start, span_end in _spans(text, start, end, separator):
        yield from _pieces(
            text, span_start, span_end, strength if first else inner, level + 1, limit
        )
        first = False


def pieces(text: str, limit: int) -> list[Piece]:
    """Paragraphs of ``text``, split further where longer than ``limit``."""
    found: list[Piece] = []
    for span in _spans(text, 0, len(text), _PARAGRAPH_BREAK):
        trimmed = _trimmed(text, *span)
        if trimmed is not None:
            found.extend(_pieces(text, *trimmed, PARAGRAPH, 0, limit))
    return found


def _cut(run: list[Piece], max_chars: int) -> int:
    """How many pieces of ``run`` the chunk keeps: up to its strongest late boundary."""
    begin = run[0].start
    best, best_strength = len(run), -1
    for index in range(1, len(run)):
        if run[index].start - begin < max_chars // 2:
            continue
        if run[index].strength >= best_strength:
            best, best_strength = index, run[index].strength
    return best


def _overlap(kept: list[Piece], overlap_chars: int) -> list[Piece]:
    """The last whole pieces of ``kept`` spanning at most ``overlap_chars`` (never all of it)."""
    carried: list[Piece] = []
    for piece in reversed(kept[1:]):
        if kept[-1].end - piece.start > overlap_chars:
            break
        carried.insert(0, piece)
    return carried


def chunk_text(text: str, options: ChunkingOptions | None = None) -> list[Chunk]:
    """``text`` cut into chunks as the module describes, in document order."""
    options = options or ChunkingOptions()
    chunks: list[Chunk] = []
    run: list[Piece] = []

    def emit(kept: list[Piece]) -> None:
        start, end = kept[0].start, kept[-1].end
        chunks.append(Chunk(len(chunks), start, end, text[start:end]))

    for piece in pieces(text, options.max_chars):
        while run and piece.end - run[0].start > options.max_chars:
            if len(run) == 1 or piece.strength >= max(p.strength for p in run[1:]):
                keep = len(run)
            else:
                keep = _cut(run, options.max_chars)
            kept = run[:keep]
            emit(kept)
            rest = run[keep:]
            carried = _overlap(kept, options.overlap_chars)
            # The overlap gives way first when it and the next pieces do not fit.
            while carried and piece.end - carried[0].start > options.max_chars:
                carried.pop(0)
            run = [*carried, *rest]
        run.append(piece)
    if run:
        emit(run)
    return chunks
