"""The text cut and the tokenizer: the first two steps of the model's contract, shared by training and serving.

Long prompts are cut *before* tokenising, keeping the start (the instruction usually leads) and the end (the question
often closes the prompt), so the cost of tokenising is bounded whatever the length. The cut is part of the model:
it is stored in the model's metadata and training applies it to every example.

Tokenising uses the WordPiece vocabulary of ``tokenizer.json`` (loaded with ``tokenizers``), but splits words with
one regex and looks whole words up in a dict first; only out-of-vocabulary words go through the ``tokenizers``
WordPiece model. The full ``tokenizers`` pipeline tracks offsets and costs ~0.45 µs per character here, several
times this path, which would blow the per-request latency budget. Its BERT normaliser (≈0.2 µs per character even
on its own) is replaced by :func:`words`, which does the parts that decide which vocabulary entries a text can hit.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tokenizers import Tokenizer

__all__ = ["CUT_JOINER", "TextCut", "WordPieceTokenizer", "words"]

CUT_JOINER = "\n"
"""Put between the kept start and end of a cut text, so the two halves never fuse into one word."""

_WORDS = re.compile(r"\w+|[^\w\s]")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
"""The CJK ideograph blocks BERT's normaliser splits into one-character words (its ``_is_chinese_char``)."""
_WORDS_UNICODE = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+|[^\\w\\s]")
_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
"""The combining diacritical mark blocks: what BERT's accent stripping removes from Latin, Greek and Cyrillic."""


def words(text: str) -> list[str]:
    """The lower-case words of ``text`` as the WordPiece vocabulary spells them.

    The vocabulary was built from BERT-normalised text: lower-cased, accents stripped (NFD, then combining marks
    dropped) and every CJK ideograph a word of its own. Without those steps "naïve café" is two unknown words and a
    Chinese sentence is one. ASCII text (almost every prompt) needs none of them and takes the one-regex path.
    """
    text = text.lower()
    if text.isascii():
        return _WORDS.findall(text)
    return _WORDS_UNICODE.findall(_MARKS.sub("", unicodedata.normalize("NFD", text)))


def _distinct_words(text: str) -> str:
    """The words of ``text`` without repeats, in first-seen order, joined by single spaces."""
    return " ".join(dict.fromkeys(text.split()))


def _inside_word(text: str, at: int) -> bool:
    """Whether a window edge at ``at`` cuts a word (``str.split``'s whitespace on neither side)."""
    return 0 < at < len(text) and not text[at - 1].isspace() and not text[at].isspace()


def _one_block(text: str, start: int, end: int, period: int) -> str:
    """``text[start:end]`` of a ``period``-repeated text, from a block boundary: one block and the last partial one.

    Every block ends in whitespace, so no word spans two blocks, each whole block holds the same words, and the
    partial block's words are the block's own except perhaps its last, which the edge may cut: the de-duplicated
    words are the same.
    """
    if end - start <= period:
        return text[start:end]
    return text[start : start + period] + text[end - (end - start) % period : end]


def _stripped_bounds(text: str) -> tuple[int, int]:
    """``start, end`` with ``text[start:end] == text.strip()``, copying only the whitespace at the ends in growing
    pieces (``strip`` would copy a long text whole)."""
    start, end, size = 0, len(text), 4096
    while start < end and text[start].isspace():
        piece = text[start : start + size]
        start += len(piece) - len(piece.lstrip())
        size *= 2
    size = 4096
    while end > start and text[end - 1].isspace():
        piece = text[max(start, end - size) : end]
        end -= len(piece) - len(piece.rstrip())
        size *= 2
    return start, end


def _blocks(text: str) -> tuple[int, int]:
    """``(p, end)``: ``text[:end]`` is a block of ``p`` characters ending in whitespace, repeated (``end`` a multiple
    of ``p``, or ``len(text)`` if the whole text repeats the block); ``(0, 0)`` if the text does not start so.

    Such a start is a prompt pasted again and again, or one filler word or phrase before the real text. No word
    spans two blocks and each block holds the same words, so a window holds the words of one block plus what follows
    the blocks: see :meth:`TextCut._head`. Only the first recurrence of the text's opening is tried (one substring
    search), and how far it repeats is found by halving (a few comparisons of slices).
    """
    p = text.find(text[:32], 1)
    if p <= 0 or not text[p - 1].isspace():
        return 0, 0
    low, high = 0, len(text) - p  # the longest m with text[p : p + m] == text[:m]
    while low < high:
        middle = (low + high + 1) // 2
        if text[p : p + middle] == text[:middle]:
            low = middle
        else:
            high = middle - 1
    if p + low == len(text):
        return p, len(text)
    end = (p + low) // p * p
    return (p, end) if end >= 2 * p else (0, 0)


@dataclass(frozen=True, slots=True)
class TextCut:
    """Keep the first ``head_chars`` and the last ``tail_chars`` characters of a longer text.

    The model reads the *set* of tokens, so before cutting a longer text its words are de-duplicated (first
    occurrence kept) and its whitespace collapsed: repeating the prompt, padding it with blank lines or appending
    the same filler word many times cannot push the prompt's own words out of the kept start and end. Only windows
    at the two ends are read: ``WINDOW`` times the kept size, doubled while repeats leave too little text, up to
    ``MAX_WINDOW`` times, so the cost is bounded for any input and small for ordinary prompts. Texts up to twice the
    kept size are de-duplicated whole. The windows are *defined* as re-split from scratch at each size; the reading
    is cheaper (each character once, or one block of a pasted-again text) and gives the same text, which a property
    test checks against that definition: the cut is part of the model, so its speed-ups must not change it.
    """

    head_chars: int = 256
    tail_chars: int = 96

    WINDOW: ClassVar[float] = 1.5
    MAX_WINDOW: ClassVar[float] = 32.0
    LONG_CHARS: ClassVar[int] = 32_768
    """Past this length a text (a body may be many MB) is read only at its ends, unless the widest windows meet;
    only a shorter text is searched for a repeated block, a search that reads all of it."""

    def apply(self, text: str) -> str:
        """Return ``text`` unchanged if it fits, else its start and end joined by :data:`CUT_JOINER`.

        Idempotent: a cut text fits (the joiner is allowed for), so cutting it again changes nothing.
        """
        keep = self.head_chars + self.tail_chars
        if len(text) <= keep + len(CUT_JOINER):
            return text
        if len(text) > self.LONG_CHARS:
            head_reach, tail_reach = self._reach(self.head_chars), self._reach(self.tail_chars)
            start, end = _stripped_bounds(text)
            if end - start > max(head_reach, tail_reach):  # no window reaches the other end: read only the ends
                head, _, _ = self._head(text[start : start + head_reach])
                return head[: self.head_chars] + CUT_JOINER + self._tail(text[end - tail_reach : end], 0)
        text = text.strip()
        if len(text) <= 2 * keep:
            text = _distinct_words(text)
            if len(text) <= keep + len(CUT_JOINER):
                return text
            tail = text[len(text) - self.tail_chars :] if self.tail_chars else ""
            return text[: self.head_chars] + CUT_JOINER + tail
        head, whole, period = self._head(text)
        if whole and len(head) <= keep + len(CUT_JOINER):  # the window grew over all of a very repetitive text
            return head
        return head[: self.head_chars] + CUT_JOINER + self._tail(text, period)

    def _reach(self, size: int) -> int:
        """The widest window for ``size`` kept characters: the growing series' last size."""
        scale = self.WINDOW
        while scale < self.MAX_WINDOW:
            scale *= 2
        return int(size * scale)

    def _head(self, text: str, blocks: tuple[int, int] | None = None) -> tuple[str, bool, int]:
        """The de-duplicated start of ``text`` (at least ``head_chars`` long, or all of it), whether it is all, and
        the text's period if the first window was not enough and the whole text repeats one block (else 0). Given
        ``blocks`` (:func:`_blocks`) are used as they are.

        Equal to ``_distinct_words(text[:window])`` for the first window of the growing series that is long enough,
        but each character is read once: a grown window reads only what it adds, re-reading the word its previous
        edge cut (and forgetting that word's cut-off piece if only the cut made it new). A text that starts with one
        block repeated reads one block and what follows the blocks up to the window's edge instead.
        """
        seen: dict[str, None] = {}
        cut_word, cut_word_is_new = "", False
        done = 0
        scale = self.WINDOW
        while True:
            window = int(self.head_chars * scale)
            if blocks and blocks[0]:
                period, end = blocks  # text[:end] repeats text[:period]
                edge = min(window, len(text))
                head = _distinct_words(
                    _one_block(text, 0, edge, period) if edge <= end else text[:period] + text[end:edge]
                )
            else:
                if cut_word_is_new:
                    del seen[cut_word]
                ws = text[done - len(cut_word) : window].split()
                last_was_seen = bool(ws) and ws[-1] in seen
                seen.update(dict.fromkeys(ws))
                head = " ".join(seen)
            if len(head) >= self.head_chars or window >= len(text) or scale >= self.MAX_WINDOW:
                period, end = blocks or (0, 0)
                return head, window >= len(text), period if end == len(text) else 0  # the tail reads one block too
            if blocks is None:  # the start repeats itself: is it one block repeated? (a bounded look)
                blocks = _blocks(text) if len(text) <= self.LONG_CHARS else (0, 0)
            if not blocks[0]:
                cut_word = ws[-1] if ws and _inside_word(text, window) else ""
                cut_word_is_new = bool(cut_word) and not last_was_seen and ws.count(cut_word) == 1
                done = window
            scale *= 2

    def _tail(self, text: str, period: int) -> str:
        """The last ``tail_chars`` characters of the de-duplicated end of ``text``.

        Equal to ``_distinct_words(text[-window:])`` for the first long-enough window, read once as in :meth:`_head`.
        A grown window puts its new words *before* the ones read, so it keeps the first word read apart (the new
        edge may join it to the word before) and the de-duplicated rest, and rebuilds the order from the new words.
        """
        if not self.tail_chars:
            return ""
        first: list[str] = []  # the first word of the window read so far (none while it holds only whitespace)
        rest: dict[str, None] = {}  # the window's other words, de-duplicated in first-seen order
        done = len(text)
        scale = self.WINDOW
        while True:
            window = int(self.tail_chars * scale)
            start = max(0, len(text) - window)
            if period:  # the end of a block, then whole blocks (ending in whitespace) from a block boundary on
                boundary = -(-start // period) * period
                ws = (text[start:boundary] + " " + _one_block(text, boundary, len(text), period)).split()
            else:
                ws = text[start:done].split()
                if first and ws and _inside_word(text, done):
                    ws[-1] += first[0]
                else:
                    ws += first
            seen = dict.fromkeys(ws)
            seen.update(rest)
            tail = " ".join(seen)
            if len(tail) >= self.tail_chars or window >= len(text) or scale >= self.MAX_WINDOW:
                return tail[max(0, len(tail) - self.tail_chars) :]
            if ws and not period:
                first, rest = ws[:1], dict.fromkeys(ws[1:]) | rest
            done = start
            scale *= 2


class WordPieceTokenizer:
    """Lower-cased word split + WordPiece ids; thread-safe (read-only except an idempotent memo of WordPiece splits)."""

    __slots__ = ("_fallback", "_pieces", "_unk_id", "_vocab")

    PIECES_CACHE: ClassVar[int] = 50_000
    """Most out-of-vocabulary words remembered with their pieces (a WordPiece call costs several µs)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._vocab: Mapping[str, int] = dict(tokenizer.get_vocab())
        self._fallback = tokenizer.model
        unk = tokenizer.token_to_id("[UNK]")
        self._unk_id = 0 if unk is None else unk
        # Per-instance memo of WordPiece splits. Single dict operations are atomic under the GIL, and a lost race
        # only recomputes a value that is a pure function of the word, so concurrent use stays correct.
        self._pieces: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: Path) -> WordPieceTokenizer:
        """Load a ``tokenizers`` JSON file whose model is WordPiece (as MiniLM's and model2vec's are)."""
        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (the embedding table's row count)."""
        return max(self._vocab.values()) + 1

    def ids(self, text: str, skip: frozenset[str] = frozenset()) -> list[int]:
        """Token ids of ``text`` (no special tokens), in order, leaving out the lower-case words in ``skip``."""
        out: list[int] = []
        for word in words(text):
            if word not in skip:
                out.extend(self._word_ids(word))
        return out

    def distinct_ids(self, text: str, skip: frozenset[str] = frozenset()) -> set[int]:
        """The set of :meth:`ids`, computed once per distinct word (the model only reads the set)."""
        vocab = self._vocab
        out: set[int] = set()
        for word in set(words(text)) - skip:
            hit = vocab.get(word)  # inlined fast path: most words are whole vocabulary entries
            if hit is not None:
                out.add(hit)
            else:
                out.update(self._word_ids(word))
        return out

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """WordPiece ids of one lower-case word: a dict hit for whole words, else the (memoised) WordPiece model."""
        hit = self._vocab.get(word)
        if hit is not None:
            return (hit,)
        known = self._pieces.get(word)
        if known is not None:
            return known
        try:
            pieces = self._fallback.tokenize(word)
        except UnicodeEncodeError:  # a lone surrogate (text decoded with surrogateescape): not UTF-8, not a word
            pieces = []
        ids = tuple(p.id for p in pieces) if pieces else (self._unk_id,)
        if len(self._pieces) >= self.PIECES_CACHE:
            self._pieces.clear()
        self._pieces[word] = ids
        return ids
