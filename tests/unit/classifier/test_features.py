"""The shared feature step: gaming-resistant by construction (distinct tokens, capped length)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifier.features import DENSE_NAMES, NEUTRAL_WORDS, FeatureSpec, Featurizer, embedding_bag
from classifier.tokenize import TextCut, WordPieceTokenizer
from tests.unit.classifier.tiny import tiny_tokenizer

SPEC = FeatureSpec(cut=TextCut(head_chars=40, tail_chars=20), length_cap_tokens=8, prior_tokens=2.0, neutral_words=())


def featurizer(spec: FeatureSpec = SPEC) -> Featurizer:
    return Featurizer(WordPieceTokenizer(tiny_tokenizer()), spec)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("what is the integral?", "what is the integral? what is the integral?", id="repetition"),
        pytest.param("what is the integral?", "  what   is\n\n the\tintegral?   ", id="whitespace"),
        pytest.param("what is the integral?", "WHAT IS THE INTEGRAL?", id="case"),
        pytest.param("prove that primes are infinite", "prove that primes are infinite" + " " * 5000, id="padding"),
    ],
)
def test_invariant_to(a: str, b: str) -> None:
    fa, fb = featurizer().encode(a), featurizer().encode(b)
    np.testing.assert_array_equal(fa.ids, fb.ids)
    np.testing.assert_array_equal(fa.dense, fb.dense)


def test_length_is_capped() -> None:
    long = featurizer().encode(" ".join(["what", "is", "the", "integral", "of", "x", "2", "+", "hello", "prime"]))
    assert long.dense.shape == (1, len(DENSE_NAMES))
    assert long.dense[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("prove that primes are infinite", "please prove that primes are infinite", id="politeness"),
        pytest.param(
            "prove that primes are infinite .", "easy question . prove that primes are infinite .", id="claim"
        ),
        pytest.param("integral of x ?", "What is the integral of x?", id="function-words"),
    ],
)
def test_neutral_words_are_ignored(a: str, b: str) -> None:
    f = featurizer(FeatureSpec(cut=SPEC.cut, length_cap_tokens=8, prior_tokens=2.0))
    fa, fb = f.encode(a), f.encode(b)
    np.testing.assert_array_equal(fa.ids, fb.ids)
    np.testing.assert_array_equal(fa.dense, fb.dense)


def test_neutral_words_cover_cheap_talk() -> None:
    for word in ("easy", "simple", "cheap", "model", "route", "please", "thanks", "the"):
        assert word in NEUTRAL_WORDS


def test_empty_text_maps_to_pad() -> None:
    f = featurizer().encode("")
    np.testing.assert_array_equal(f.ids, [0])
    assert f.dense[0, 0] == 0.0


def test_ids_are_sorted_and_distinct() -> None:
    f = featurizer().encode("x is x is the")
    assert f.ids.dtype == np.int64
    assert list(f.ids) == sorted(set(f.ids.tolist()))
    assert f.dense[0, 0] == pytest.approx(math.log1p(3) / math.log1p(8))


def test_embedding_bag_shrinks_towards_zero() -> None:
    table = np.arange(25 * 2, dtype=np.float32).reshape(25, 2)
    f = featurizer().encode("is the")  # ids 3 and 4
    bag = embedding_bag(table, f, prior_tokens=2.0)
    np.testing.assert_allclose(bag[0, :2], (table[3] + table[4]) / 4.0)
    assert bag[0, 2] == f.dense[0, 0]
