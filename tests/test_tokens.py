"""The shared token sampler and beam search, on numpy-only toy models (no export needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from deploykit.errors import InputError
from deploykit.runtimes.tokens import SamplingConfig, beam_search, decode_tokens, encode_text, generate, pick_tokens

LOGITS = np.log(np.array([[0.05, 0.4, 0.3, 0.15, 0.1]]))


def frequencies(config: SamplingConfig, draws: int = 20000) -> np.ndarray:
    u = np.random.default_rng(0).random(draws)
    tokens = pick_tokens(np.repeat(LOGITS, draws, 0), u, config)
    return np.bincount(tokens, minlength=5) / draws


def test_sampling_modes_follow_their_distributions() -> None:
    assert pick_tokens(LOGITS, np.array([0.99]), SamplingConfig(temperature=0)).tolist() == [1]
    np.testing.assert_allclose(frequencies(SamplingConfig()), [0.05, 0.4, 0.3, 0.15, 0.1], atol=0.01)
    np.testing.assert_allclose(frequencies(SamplingConfig(top_k=2)), [0, 4 / 7, 3 / 7, 0, 0], atol=0.01)
    # top-p 0.8 keeps 0.4 + 0.3 + 0.15 (the first set reaching 0.8)
    np.testing.assert_allclose(frequencies(SamplingConfig(top_p=0.8)), [0, 0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0], atol=0.01)
    cold = frequencies(SamplingConfig(temperature=0.25))
    assert cold[1] > 0.7 and cold[0] < 0.001


def test_uniform_picks_through_the_cdf() -> None:
    """Token i is picked for u in [cdf[i-1], cdf[i]): the mapping the torch and ORT loops share."""
    u = np.array([0.0, 0.049, 0.051, 0.449, 0.451, 0.999])
    tokens = pick_tokens(np.repeat(LOGITS, len(u), 0), u, SamplingConfig())
    assert tokens.tolist() == [0, 0, 1, 1, 2, 4]


class TableModel:
    """A token model whose next-token log-probs depend only on the previous token (a Markov chain)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.log(table)
        self.vocab_size = table.shape[1]
        self.last = np.zeros(0, np.int64)

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        self.last = np.asarray([p[-1] for p in prompts])
        return self.table[self.last]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.last = tokens
        return self.table[tokens]

    def select(self, rows: np.ndarray) -> None:
        self.last = self.last[rows]


# From 0, greedy takes 1 (0.6) and then eos (0.5): 0.30. Taking 2 (0.4) then eos (0.99) is 0.396.
CHAIN = np.array(
    [
        [0.0, 0.6, 0.4, 0.0],
        [0.0, 0.3, 0.2, 0.5],
        [0.0, 0.0, 0.01, 0.99],
        [0.25, 0.25, 0.25, 0.25],
    ]
) + 1e-12


def test_beam_search_finds_what_greedy_misses() -> None:
    greedy = generate(TableModel(CHAIN), [np.array([0])], SamplingConfig(temperature=0, max_new_tokens=5, stop=(3,)))
    assert greedy[0].tolist() == [1]
    seq, score = beam_search(TableModel(CHAIN), np.array([0]), beams=2, max_new_tokens=5, eos=3)
    assert seq.tolist() == [2]
    assert score == pytest.approx(np.log(0.4 * 0.99), abs=1e-9)


def test_generate_stops_rows_independently_and_checks_its_config() -> None:
    out = generate(TableModel(CHAIN), [np.array([2]), np.array([0])], SamplingConfig(temperature=0, max_new_tokens=4, stop=(3,)))
    assert [o.tolist() for o in out] == [[], [1]]
    for bad, match in [
        (SamplingConfig(temperature=-1), "temperature is -1"),
        (SamplingConfig(top_k=9), "top_k is 9, expected an integer in 1..4"),
        (SamplingConfig(top_p=0), "top_p is 0"),
        (SamplingConfig(max_new_tokens=0), "max_new_tokens is 0"),
        (SamplingConfig(stop=(7,)), r"stop token id\(s\) \[7\]"),
    ]:
        with pytest.raises(InputError, match=match):
            generate(TableModel(CHAIN), [np.array([0])], bad)


def test_text_round_trip_and_unknown_characters() -> None:
    vocab = ["a", "b", " ", "<eos>"]
    assert decode_tokens(encode_text("ab ba", vocab), vocab) == "ab ba"
    assert decode_tokens(np.array([0, 3, 1]), vocab) == "ab"
    with pytest.raises(InputError, match="'c' at position 1"):
        encode_text("acb", vocab)
