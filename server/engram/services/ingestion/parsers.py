"""Text extraction, one parser per media type.

Parsers are synchronous and CPU-bound; the runner calls them in a worker
thread.  Each failure is a :class:`ParseError` whose message says what is
wrong with the file and where (byte offset, line, page), in words meant for
the person who uploaded it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser

import pypdf
from pypdf.errors import PyPdfError

from engram.services.ingestion import media_types


class ParseError(Exception):
    """The file cannot be read as its type; the message is shown to users."""


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    page_count: int = 0


def parse(data: bytes, media_type: str) -> ParsedDocument:
    """The text of ``data`` read as ``media_type``; ParseError when it cannot be read."""
    parser = _PARSERS.get(media_type)
    if parser is None:
        raise ParseError(f"files of type {media_type} cannot be read")
    document = parser(data)
    text = document.text.replace("\x00", "").strip()
    if not text:
        raise ParseError("the file contains no text")
    return ParsedDocument(text=text, page_count=document.page_count)


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark); anything else is refused precisely."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ParseError(
            f"the file is not UTF-8 text: invalid byte 0x{data[error.start]:02x} at offset "
            f"{error.start} (line {line}); save it as UTF-8 and upload it again"
        ) from error


def _plain(data: bytes) -> ParsedDocument:
    return ParsedDocument(decode_text(data).replace("\r\n", "\n"))


# Elements whose content is never text a reader sees.
_HIDDEN_TAGS = frozenset({"script", "style", "noscript", "template", "head", "svg"})
# Elements that start a new line (or paragraph) when rendered.
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "section", "article", "header", "footer", "main", "aside", "nav",
        "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "table", "tr", "blockquote",
        "pre", "br", "hr", "dl", "dt", "dd", "figure", "figcaption", "title",
    }
)  # fmt: skip


class _TextCollector(HTMLParser):
    """Visible text of an HTML document, with blank lines between blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden_depth:
            self.parts.append(data)

    def text(self) -> str:
        blocks = "".join(self.parts).split("\n\n")
        cleaned = (" ".join(block.split()) for block in blocks)
        return "\n\n".join(block for block in cleaned if block)


def _html(data: bytes) -> ParsedDocument:
    collector = _TextCollector()
    collector.feed(decode_text(data))
    collector.close()
    return ParsedDocument(collector.text())


def _json(data: bytes) -> ParsedDocument:
    try:
        value = json.loads(decode_text(data))
    except json.JSONDecodeError as error:
        raise ParseError(
            f"the file is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from error
    return ParsedDocument(json.dumps(value, indent=2, ensure_ascii=False))


def _csv(data: bytes) -> ParsedDocument:
    """Each row as ``header: value`` lines, rows separated by blank lines.

    Spelling out the header beside every value keeps a row meaningful on its
    own once it is cut away from the header line.
    """
    text = decode_text(data)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:4096], ",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    rows: list[str] = []
    try:
        header = next(reader, [])
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            names = [*header, *(f"column {n}" for n in range(len(header) + 1, len(row) + 1))]
            cells = (f"{name}: {cell}" for name, cell in zip(names, row, strict=False) if cell)
            rows.append("\n".join(cells))
    except csv.Error as error:
        raise ParseError(f"the file is not valid CSV: {error} (line {reader.line_num})") from error
    if not rows and header:
        rows.append(", ".join(header))
    return ParsedDocument("\n\n".join(rows))


def _pdf(data: bytes) -> ParsedDocument:
    """The text of every page, pages separated by blank lines.

    pypdf is pure Python and well maintained; it extracts the text layer only,
    so a scanned PDF (images of pages) has no text and is reported as such.
    """
    # pypdf logs every irregularity it repairs; the file's outcome says enough.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("the PDF is encrypted with a password; upload an unencrypted copy")
        pages = list(reader.pages)
    except ParseError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as error:
        raise ParseError(
            f"the file is not a readable PDF: {error or type(error).__name__}"
        ) from error
    texts: list[str] = []
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(page.extract_text() or "")
        except (PyPdfError, ValueError, KeyError, TypeError, OSError) as error:
            raise ParseError(
                f"page {number} of the PDF cannot be read: {error or type(error).__name__}"
            ) from error
    if pages and not any(text.strip() for text in texts):
        raise ParseError(
            f"the PDF's {len(pages)} page(s) have no text layer (scanned images need OCR, "
            "which this server does not do)"
        )
    return ParsedDocument("\n\n".join(text.strip() for text in texts), page_count=len(pages))


_PARSERS: dict[str, Callable[[bytes], ParsedDocument]] = {
    media_types.TEXT: _plain,
    media_types.MARKDOWN: _plain,
    media_types.HTML: _html,
    media_types.JSON: _json,
    media_types.CSV: _csv,
    media_types.PDF: _pdf,
}
