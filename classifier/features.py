"""The one feature implementation: text → (distinct token ids, capped length). Training and serving both call it.

Features are chosen so that gaming cannot buy escalation (or de-escalation):
- the embedding bag pools the *distinct* tokens of the cut text, so repeating the prompt changes nothing and
  whitespace padding (no tokens) changes nothing;
- the only length signal is the number of distinct tokens, log-scaled and capped, so neither repetition nor padding
  with the same filler moves it far;
- words that talk about the prompt instead of posing it (:data:`NEUTRAL_WORDS`) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from classifier.tokenize import TextCut, WordPieceTokenizer

__all__ = ["DENSE_NAMES", "NEUTRAL_WORDS", "FeatureSpec", "Features", "Featurizer", "embedding_bag"]

DENSE_NAMES: tuple[str, ...] = ("log_distinct_tokens",)
"""Names of the dense features, in the order of :attr:`Features.dense`'s columns."""

_NEUTRAL_TEXT = """
easy easier easiest easily simple simpler simplest simply trivial trivially basic elementary beginner quick quickly
short brief straightforward obvious cheap cheaper cheapest small smaller smallest tiny fast faster lightweight model
models llm gpt ai assistant router route routing routed tier hard harder hardest difficult difficulty complex
complicated challenging advanced expert strong stronger strongest powerful big bigger biggest large larger frontier
smart smartest intelligent
please pls plz thanks thank thx ty hi hello hey dear kindly appreciate appreciated grateful sorry help could would
you your me my i we us our
a an the is are was were be been being am it its this that these those there here of to in on at by for with from as
and or but if so not no yes do does did done can will just only very really much many some any all also too what
which who whom how when where why
question questions answer answers answered answering task problem solve reply respond response
"""
# Lines: talk about difficulty, models and routing (a prompt's claims about itself are not evidence); politeness
# and greetings; function words; words that frame any question rather than pose one.
NEUTRAL_WORDS: tuple[str, ...] = tuple(sorted(set(_NEUTRAL_TEXT.split())))
"""Words left out of the bag and the length (matched as whole lower-case words before WordPiece): claims about the
prompt's own difficulty, politeness and function words carry no evidence of difficulty and are the first thing a
user trying to game the router adds."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Everything about the features that a trained model depends on; stored in the model's metadata."""

    cut: TextCut = field(default_factory=TextCut)
    length_cap_tokens: int = 128
    prior_tokens: float = 4.0
    """Pseudo-count of all-zero rows added to the bag: a one-word prompt's embedding is shrunk towards the table's
    (zero) mean instead of being a single, out-of-distribution token vector."""
    neutral_words: tuple[str, ...] = NEUTRAL_WORDS


@dataclass(frozen=True, slots=True)
class Features:
    """The ONNX graph's inputs for one prompt."""

    ids: npt.NDArray[np.int64]
    """Distinct token ids, sorted; never empty (an empty text maps to ``[pad_id]``)."""
    dense: npt.NDArray[np.float32]
    """Shape ``(1, len(DENSE_NAMES))``."""


class Featurizer:
    """Turns prompt text into :class:`Features`; thread-safe (see :class:`~classifier.tokenize.WordPieceTokenizer`)."""

    __slots__ = ("_length_norm", "_neutral", "_pad", "_spec", "_tokenizer")

    def __init__(self, tokenizer: WordPieceTokenizer, spec: FeatureSpec, pad_id: int = 0) -> None:
        self._tokenizer = tokenizer
        self._spec = spec
        self._pad = np.asarray([pad_id], dtype=np.int64)
        self._length_norm = math.log1p(spec.length_cap_tokens)
        self._neutral = frozenset(w.lower() for w in spec.neutral_words)

    @property
    def spec(self) -> FeatureSpec:
        """The feature settings this featurizer applies."""
        return self._spec

    def encode(self, text: str) -> Features:
        """Cut, tokenise, de-duplicate and measure ``text``."""
        distinct = sorted(self._tokenizer.distinct_ids(self._spec.cut.apply(text), self._neutral))
        if not distinct:
            return Features(ids=self._pad, dense=np.zeros((1, 1), dtype=np.float32))
        length = min(math.log1p(len(distinct)), self._length_norm) / self._length_norm
        return Features(
            ids=np.fromiter(distinct, dtype=np.int64, count=len(distinct)),
            dense=np.asarray([[length]], dtype=np.float32),
        )


def embedding_bag(table: npt.NDArray[np.float32], features: Features, prior_tokens: float) -> npt.NDArray[np.float32]:
    """The graph's pooling in numpy: sum of the distinct ids' rows / (count + prior), then the dense columns.

    Training builds its design matrix with this; the parity test checks it against the ONNX graph.
    """
    total = table[features.ids].sum(axis=0, keepdims=True, dtype=np.float32)
    pooled = total / np.float32(len(features.ids) + prior_tokens)
    return np.concatenate([pooled, features.dense], axis=1)
