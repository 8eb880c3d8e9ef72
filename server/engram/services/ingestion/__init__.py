"""Turning uploaded files into searchable passages, in the background.

``media_types`` says what can be read, ``parsers`` extracts text per type,
``chunker`` cuts the text into overlapping pieces, and ``runner`` drives each
file through parse -> chunk -> embed -> store outside any request.
"""
