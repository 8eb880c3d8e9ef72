"""The BERT uncased WordPiece tokenizer, built from its vocabulary file.

all-MiniLM-L6-v2 reads the text the way ``bert-base-uncased`` does: clean
control characters, split CJK characters apart, lower-case (which, with
``strip_accents`` unset, also strips accents), split on whitespace and
punctuation, then greedy longest-match WordPiece over a 30,522-entry
vocabulary, framed as ``[CLS] ... [SEP]``.  The ``tokenizers`` library has
each of those steps; only the vocabulary is data, and it ships beside this
module (``data/``, see ``data/NOTICE``), so no model hub and no second
model package is needed at run time.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# BERT's WordPiece gives up on a "word" longer than this and emits [UNK].
_MAX_WORD_CHARACTERS = 100


def bert_uncased_tokenizer(vocabulary: Path, max_tokens: int) -> Tokenizer:
    """A tokenizer that truncates to ``max_tokens`` (framing included) and pads to the longest."""
    wordpiece = models.WordPiece.from_file(
        str(vocabulary), unk_token=UNK, max_input_chars_per_word=_MAX_WORD_CHARACTERS
    )
    tokenizer = Tokenizer(wordpiece)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The special tokens are matched in the raw text too, as the model's own
    # tokenizer does, so a text that spells "[SEP]" is read the same way.
    tokenizer.add_special_tokens([PAD, UNK, CLS, SEP, MASK])
    cls_id, sep_id, pad_id = (_token_id(tokenizer, token) for token in (CLS, SEP, PAD))
    tokenizer.post_processor = processors.BertProcessing((SEP, sep_id), (CLS, cls_id))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=PAD)
    return tokenizer


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the vocabulary has no {token} token")
    return token_id
