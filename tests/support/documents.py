"""Documents for ingestion tests and benchmarks, built here rather than stored as fixtures."""

from __future__ import annotations


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_document(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: each page shows its lines in Helvetica, top to bottom.

    Written by hand (objects, content streams, cross-reference table with
    computed offsets) so that no PDF writer is needed to test a PDF reader.
    """
    count = len(pages)
    font_number = 3 + 2 * count
    kids = " ".join(f"{3 + 2 * n} 0 R" for n in range(count))
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
    ]
    for number, lines in enumerate(pages):
        shown = " T* ".join(f"({_pdf_string(line)}) Tj" for line in lines)
        content = f"BT /F1 10 Tf 12 TL 50 750 Td {shown} ET".encode()
        objects.append(
            (
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                f"/Resources << /Font << /F1 {font_number} 0 R >> >> "
                f"/Contents {4 + 2 * number} 0 R >>"
            ).encode()
        )
        objects.append(
            f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def long_document(paragraphs: int, sentences: int = 12) -> str:
    """Distinct sentences in paragraphs of about 900 characters (one chunk each)."""
    return "\n\n".join(
        " ".join(
            f"Paragraph {p} sentence {s} talks about item number {p * 100 + s} in detail."
            for s in range(sentences)
        )
        for p in range(paragraphs)
    )
