"""Shared constants and helpers of the classifier tests."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import WordPiece

__all__ = ["REPO", "SHARED_DATA", "SHIPPED", "TINY_VOCAB", "tiny_tokenizer"]

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO / ".." / "shared" / "data"
SHIPPED = REPO / "classifier" / "models" / "default"
TINY_VOCAB = [
    "[PAD]", "[UNK]", "what", "is", "the", "integral", "of", "x", "2", "+", "?", "hello", "prove", "that",
    "prime", "##s", "are", "infinite", ".", "please", "easy", "question", "un", "##believ", "##able",
]  # fmt: skip


def tiny_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer over :data:`TINY_VOCAB`."""
    return Tokenizer(WordPiece({t: i for i, t in enumerate(TINY_VOCAB)}, unk_token="[UNK]"))
