"""Chunking and text extraction of data-source files (no database, no model)."""

from __future__ import annotations

import itertools

import pytest

from engram.services.ingestion import media_types
from engram.services.ingestion.chunker import ChunkingOptions, chunk_text
from engram.services.ingestion.parsers import ParseError, parse
from support.documents import long_document, pdf_document


def covered(text: str, chunks: list[tuple[int, int]]) -> bool:
    """Whether every non-blank character of ``text`` lies in some chunk."""
    inside = [False] * len(text)
    for start, end in chunks:
        for position in range(start, end):
            inside[position] = True
    return all(inside[i] or text[i].isspace() for i in range(len(text)))


@pytest.mark.parametrize("paragraphs", [1, 7, 60])
def test_chunks_are_exact_bounded_slices_covering_the_text(paragraphs: int) -> None:
    text = long_document(paragraphs)
    chunks = chunk_text(text)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < len(chunk.text) <= 1000
        assert chunk.text == chunk.text.strip()
    assert covered(text, [(chunk.start, chunk.end) for chunk in chunks])
    starts = [chunk.start for chunk in chunks]
    assert starts == sorted(set(starts))


def test_chunks_overlap_by_whole_sentences() -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(200))
    chunks = chunk_text(text, ChunkingOptions(max_chars=300, overlap_chars=80))
    assert len(chunks) > 5
    for previous, chunk in itertools.pairwise(chunks):
        shared = previous.end - chunk.start
        assert 0 < shared <= 80
        assert chunk.text.startswith("Sentence number")


def test_a_paragraph_break_is_preferred_to_a_sentence_end() -> None:
    first = " ".join(f"First part sentence {n}." for n in range(20))  # about 480 characters
    second = " ".join(f"Second part sentence {n}." for n in range(20))
    chunks = chunk_text(f"{first}\n\n{second}", ChunkingOptions(max_chars=700, overlap_chars=0))
    assert chunks[0].text == first
    assert chunks[1].text.startswith("Second part sentence 0.")


def test_text_without_spaces_is_cut_hard() -> None:
    chunks = chunk_text("x" * 2500, ChunkingOptions(max_chars=1000, overlap_chars=100))
    assert [(c.start, c.end) for c in chunks] == [(0, 1000), (1000, 2000), (2000, 2500)]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap_chars"):
        ChunkingOptions(max_chars=100, overlap_chars=100)


def test_html_keeps_visible_text_only() -> None:
    html = (
        b"<html><head><style>p{}</style><script>alert(1)</script></head><body>"
        b"<h1>Title</h1><p>One &lt;two&gt;</p><noscript>hidden</noscript><ul><li>item</li></ul>"
    )
    text = parse(html, media_types.HTML).text
    assert text == "Title\n\nOne <two>\n\nitem"


def test_csv_rows_carry_their_headers() -> None:
    text = parse(b"a,b\n1,2\n\n3,4,5\n", media_types.CSV).text
    assert text == "a: 1\nb: 2\n\na: 3\nb: 4\ncolumn 3: 5"


@pytest.mark.parametrize(
    ("data", "media_type", "message"),
    [
        (b"", media_types.TEXT, "the file contains no text"),
        (b"   \n", media_types.MARKDOWN, "the file contains no text"),
        (b"ok\n\xff", media_types.TEXT, "invalid byte 0xff at offset 3 (line 2)"),
        (b'[1, 2,\n  "x"', media_types.JSON, "line 2, column 6"),
        (b"not a pdf", media_types.PDF, "not a readable PDF"),
        (pdf_document([[""]]), media_types.PDF, "no text layer"),
    ],
)
def test_unreadable_files_say_why(data: bytes, media_type: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(data, media_type)
    assert message in str(caught.value)


def test_pdf_pages_are_counted_and_joined() -> None:
    document = parse(pdf_document([["alpha (one)"], ["beta"], ["gamma"]]), media_types.PDF)
    assert document.page_count == 3
    assert document.text.split("\n\n") == ["alpha (one)", "beta", "gamma"]


def test_media_types_from_names_and_aliases() -> None:
    assert media_types.from_file_name("Report.PDF") == media_types.PDF
    assert media_types.from_file_name("notes") is None
    assert media_types.normalise("Text/Markdown; charset=utf-8") == media_types.MARKDOWN
    assert media_types.normalise("application/x-pdf") == media_types.PDF
