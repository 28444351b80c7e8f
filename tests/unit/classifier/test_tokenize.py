"""The text cut (part of the model's contract) and the WordPiece tokenizer."""

# ruff: noqa: RUF001  (non-Latin look-alike letters and full-width punctuation are the point of the tests below)

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from classifier.loader import DEFAULT_MODEL_DIR
from classifier.tokenize import CUT_JOINER, TextCut, WordPieceTokenizer, _blocks, words
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


def _distinct(text: str) -> str:
    return " ".join(dict.fromkeys(text.split()))


def _reference_window(cut: TextCut, text: str, size: int, at_end: bool) -> str:
    """The de-duplicated window the cut's contract defines: the words of the first ``size * WINDOW * 2**k``
    characters (or the last, ``at_end``) without repeats, for the smallest k that gives enough text, at most
    ``MAX_WINDOW``. Re-splits every window; the runtime reads each character once and must give the same text."""
    scale = cut.WINDOW
    while True:
        window = int(size * scale)
        piece = text[max(0, len(text) - window) :] if at_end else text[:window]
        out = _distinct(piece)
        if len(out) >= size or window >= len(text) or scale >= cut.MAX_WINDOW:
            return out
        scale *= 2


def _assert_windows_match_reference(cut: TextCut, text: str) -> None:
    """Both ways of reading: each character once, and (for a repeated block) one block per window."""
    want_head = _reference_window(cut, text, cut.head_chars, at_end=False)
    tail = _reference_window(cut, text, cut.tail_chars, at_end=True)
    want_tail = tail[max(0, len(tail) - cut.tail_chars) :]
    for blocks in {(0, 0), _blocks(text)}:
        assert cut._head(text, blocks)[0] == want_head, blocks
        assert cut._head(text)[0] == want_head
        period = blocks[0] if blocks[1] == len(text) else 0
        assert cut._tail(text, period) == want_tail, blocks


_PIECES = st.sampled_from(["a", "ab", "abc", "x", "é", "🙂", "longword", "w1", "w2", "w3", "v7", "v8"])
_GAPS = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", "\u3000", "\xa0", "", " \n "])


@settings(max_examples=400)
@given(
    parts=st.lists(st.tuples(_PIECES, _GAPS), max_size=120),
    repeat=st.integers(min_value=1, max_value=12),
    head_chars=st.sampled_from([1, 2, 5, 10, 17, 40, 256]),
    tail_chars=st.sampled_from([1, 2, 5, 7, 96]),
)
def test_cut_windows_read_once_equal_the_reference(
    parts: list[tuple[str, str]], repeat: int, head_chars: int, tail_chars: int
) -> None:
    """Window edges inside words, words that only the cut made new, lines seen before: all as if re-split."""
    text = "".join(word + gap for word, gap in parts) * repeat
    _assert_windows_match_reference(TextCut(head_chars=head_chars, tail_chars=tail_chars), text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Write a function that sorts a list.\n\n" * 250, id="prompt-repeated-by-line"),
        pytest.param("Write a function that sorts a list. " * 250, id="prompt-repeated-in-line"),
        pytest.param("word " * 1600 + " ".join(f"q{i}" for i in range(200)), id="filler-then-question"),
        pytest.param("x" * 9000 + " tail words", id="one-long-word"),
        pytest.param("log line 1\nlog line 2\n" * 300 + "new line\n" + "log line 1\n" * 300, id="log-lines"),
    ],
)
def test_cut_windows_of_long_repetitive_text_equal_the_reference(text: str) -> None:
    _assert_windows_match_reference(TextCut(), text)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("Sort a list, please.\n\n" * 20, (22, 440), id="repeated-by-line"),
        pytest.param(("Sort a list, please. " * 20)[:-5], (21, 415), id="repeated-in-line-cut-short"),
        pytest.param("ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab", (3, 53), id="one-word"),
        pytest.param("Sort a list, please." * 20, (0, 0), id="blocks-fuse-into-words"),
        pytest.param("Sort a list, please. Then sort it again. " + "x" * 40, (0, 0), id="not-repeated"),
        pytest.param(
            "Sort a list. " * 5 + "Then print it. " + "Sort a list. " * 5, (13, 65), id="repeated-then-changed"
        ),
        pytest.param("um " * 40 + "What is 2+2?", (3, 120), id="filler-word-then-question"),
        pytest.param("um um ummm what", (0, 0), id="fewer-than-two-whole-blocks"),
    ],
)
def test_blocks_find_a_repeated_start(text: str, want: tuple[int, int]) -> None:
    """The one-block reading is used only where it holds: whole-word blocks repeated from the start, and only as
    far as they repeat."""
    assert _blocks(text) == want


def test_a_long_text_is_not_searched_for_a_repeated_block() -> None:
    """The block check reads the whole text: past LONG_CHARS (a body may be many MB) it is not made, and the
    windows alone bound the cost, with the same output."""
    cut = TextCut()
    short = "Sort this list, please. " * 1_000
    long = short * 100
    assert cut._head(short)[2] == len("Sort this list, please. ")
    assert cut._head(long)[2] == 0  # not searched (the result is the same)
    assert cut.apply(long) == cut.apply(short)


def _reference_apply(cut: TextCut, text: str) -> str:
    """The cut as defined: strip, de-duplicate a short text whole, else the head and tail windows."""
    keep = cut.head_chars + cut.tail_chars
    if len(text) <= keep + len(CUT_JOINER):
        return text
    text = text.strip()
    if len(text) <= 2 * keep:
        text = _distinct(text)
        if len(text) <= keep + len(CUT_JOINER):
            return text
        return text[: cut.head_chars] + CUT_JOINER + text[len(text) - cut.tail_chars :]
    head = _reference_window(cut, text, cut.head_chars, at_end=False)
    scale = cut.WINDOW  # the window the head stopped at: did it cover the whole text?
    while True:
        window = int(cut.head_chars * scale)
        if len(_distinct(text[:window])) >= cut.head_chars or window >= len(text) or scale >= cut.MAX_WINDOW:
            break
        scale *= 2
    if window >= len(text) and len(head) <= keep + len(CUT_JOINER):
        return head
    tail = _reference_window(cut, text, cut.tail_chars, at_end=True)
    return head[: cut.head_chars] + CUT_JOINER + tail[max(0, len(tail) - cut.tail_chars) :]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(" \n" * 20_000 + "Sort this list. " * 5_000 + "\t" * 9_000, id="padded-both-ends"),
        pytest.param("um " * 30_000 + "What is the derivative of x**3?", id="filler-then-question"),
        pytest.param("Sort this list, please. " * 50_000, id="pasted-block-past-the-block-check"),
        pytest.param("x" * 40_000 + " then a question at the end", id="one-huge-word"),
        pytest.param(" ".join(f"w{i}" for i in range(20_000)), id="all-distinct"),
        pytest.param(" " * 20_000 + "word " * 1_400, id="long-padding-around-a-short-repetitive-text"),
    ],
)
def test_a_long_text_reads_only_its_ends_and_cuts_as_defined(text: str) -> None:
    """Past the widest windows, only the ends are read (no copy of the whole text, which may be many MB)."""
    for cut in (TextCut(), TextCut(head_chars=10, tail_chars=5)):
        assert cut.apply(text) == _reference_apply(cut, text)


def test_a_word_cut_by_a_window_edge_keeps_its_earlier_place() -> None:
    """The second window ends inside "xyz"; its "xy" was seen in the first window, so growing must not drop it."""
    text = "xy xy xy xy xy " + "q q q q q q  xy" + "z aa bb cc dd ee ff gg hh"
    cut = TextCut(head_chars=10, tail_chars=5)
    assert cut._head(text, (0, 0))[0] == "xy q xyz aa bb cc dd ee ff gg hh"
    _assert_windows_match_reference(cut, text)


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
