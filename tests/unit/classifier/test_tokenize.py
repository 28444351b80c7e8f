"""The text cut (part of the model's contract) and the WordPiece tokenizer."""

# ruff: noqa: RUF001  (non-Latin look-alike letters and full-width punctuation are the point of the tests below)

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from classifier.loader import DEFAULT_MODEL_DIR
from classifier.tokenize import CUT_JOINER, TextCut, WordPieceTokenizer, words
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


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("Naïve CAFÉ", ["naive", "cafe"], id="accents-stripped"),
        pytest.param("Cafe\u0301", ["cafe"], id="decomposed-accent-stripped"),
        pytest.param("Ελληνικά ё", ["ελληνικα", "е"], id="greek-and-cyrillic-accents"),
        pytest.param("你好，世界", ["你", "好", "，", "世", "界"], id="cjk-one-word-per-ideograph"),
        pytest.param("n为负整数", ["n", "为", "负", "整", "数"], id="cjk-next-to-latin"),
        pytest.param("Straße Łódź", ["straße", "łodz"], id="letters-without-decomposition-kept"),
        pytest.param("snake_case x+1", ["snake_case", "x", "+", "1"], id="ascii-path-unchanged"),
        pytest.param("snake_case é", ["snake_case", "e"], id="underscore-same-on-both-paths"),
    ],
)
def test_words_spell_text_as_the_vocabulary_does(text: str, want: list[str]) -> None:
    assert words(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "Naïve CAFÉ crème brûlée",
        "你好，世界！请证明费马小定理。",
        "Ελληνικά και Русский текст ё",
        "Cafe\u0301 pho\u031b\u0309 Tiếng Việt",
        "mixed 日本語のテキスト and English",
        "O(n log n) — “quotes” … ¿qué?",
    ],
)
def test_ids_match_the_full_tokenizers_pipeline(text: str) -> None:
    """The fast path gives the ids of ``tokenizers``' own BERT normaliser + pre-tokenizer + WordPiece (accents
    stripped, CJK split), so non-English prompts hit the vocabulary the teacher was distilled on."""
    path = DEFAULT_MODEL_DIR / "tokenizer.json"
    reference = Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids
    assert WordPieceTokenizer.from_file(path).ids(text) == reference
