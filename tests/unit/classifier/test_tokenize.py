"""The text cut (part of the model's contract) and the WordPiece tokenizer."""

from __future__ import annotations

import pytest

from classifier.tokenize import CUT_JOINER, TextCut, WordPieceTokenizer
from tests.unit.classifier.tiny import TINY_VOCAB, tiny_tokenizer

CUT = TextCut(head_chars=10, tail_chars=5)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("", "", id="empty"),
        pytest.param("short", "short", id="short-unchanged"),
        pytest.param("a" * 15, "a" * 15, id="exactly-fits"),
        pytest.param("a" * 16, "a" * 16, id="fits-with-joiner"),
        pytest.param("0123456789" + "x" * 50 + "VWXYZ", "0123456789" + CUT_JOINER + "VWXYZ", id="keeps-start-and-end"),
        pytest.param("  x y z " + " " * 100 + "end", "x y z end", id="padding-collapsed-far"),
        pytest.param("ab" + " " * 20 + "cd", "ab cd", id="padding-collapsed-near"),
        pytest.param("ab" + " " * 30 + "cd", "ab cd", id="padding-windows"),
        pytest.param("ab cd " * 10 + "x" * 20, "ab cd xxxx" + CUT_JOINER + "x" * 5, id="repeats-dropped"),
        pytest.param("." * 300 + " the question", "." * 10 + CUT_JOINER + "stion", id="leading-junk"),
        pytest.param("0123456789 " + "m" * 20 + " VWXYZ", "0123456789" + CUT_JOINER + "VWXYZ", id="window-path"),
    ],
)
def test_cut(text: str, want: str) -> None:
    assert CUT.apply(text) == want


def test_cut_ignores_the_middle() -> None:
    start = " ".join(f"start{i}" for i in range(100))
    end = " ".join(f"end{i}" for i in range(40))
    a = start + " " + " ".join(f"alpha{i}" for i in range(3000)) + " " + end
    b = start + " " + " ".join(f"beta{i}" for i in range(2000)) + " " + end
    cut = TextCut()
    assert cut.apply(a) == cut.apply(b)
    assert cut.apply(a).startswith("start0 start1 ")
    assert cut.apply(a).endswith(" end38 end39")


def test_cut_is_idempotent() -> None:
    cut = TextCut()
    once = cut.apply("Tell me a story. " * 300)
    assert cut.apply(once) == once


def test_cut_bounds_length() -> None:
    cut = TextCut()
    assert len(cut.apply("word " * 100_000)) <= cut.head_chars + cut.tail_chars + len(CUT_JOINER)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("What is the integral of x?", ["what", "is", "the", "integral", "of", "x", "?"], id="words"),
        pytest.param("  HELLO\n\n\tHello ", ["hello", "hello"], id="case-and-whitespace"),
        pytest.param("primes", ["prime", "##s"], id="wordpiece-fallback"),
        pytest.param("unbelievable", ["un", "##believ", "##able"], id="multi-piece"),
        pytest.param("zebra", ["[UNK]"], id="unknown"),
        pytest.param("x+2?", ["x", "+", "2", "?"], id="punctuation-split"),
    ],
)
def test_tokenizer(text: str, want: list[str]) -> None:
    tok = WordPieceTokenizer(tiny_tokenizer())
    assert [TINY_VOCAB[i] for i in tok.ids(text)] == want
    assert tok.vocab_size == len(TINY_VOCAB)


def test_distinct_ids_is_the_set_of_ids() -> None:
    tok = WordPieceTokenizer(tiny_tokenizer())
    text = "Prove that primes are infinite . unbelievable primes ? zebra zebra"
    assert tok.distinct_ids(text) == set(tok.ids(text))
    assert tok.distinct_ids(text, frozenset({"primes", "zebra"})) == set(tok.ids(text, frozenset({"primes", "zebra"})))
    assert TINY_VOCAB.index("[UNK]") not in tok.distinct_ids(text, frozenset({"zebra"}))
