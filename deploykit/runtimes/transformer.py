"""Token models over transformer graphs: KV-cached decoding and full recompute (both TokenModels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import Runner
from ..errors import InputError
from .kinds import TEXT, LoopKind, Runners, register
from .tokens import (
    LanguageModelConfig,
    SamplingConfig,
    TranslationConfig,
    check_language_model,
    check_prompts,
    check_translation,
    explain_flips,
    pad_prompts,
    translate_ids,
)

GENERATE_ROLE = "generate"  # the whole sampling loop over decoder_with_past as one graph (loop_graphs.py)


@dataclass(frozen=True, kw_only=True)
class KVCacheConfig(LanguageModelConfig):
    """A causal decoder's `decoder_with_past` graph: past_key_values.{i}.key/value [batch, heads, past, head_dim]."""

    kind = "kv_cache"
    context: int
    layers: int
    heads: int
    head_dim: int


@dataclass(frozen=True, kw_only=True)
class FullRecomputeConfig(LanguageModelConfig):
    """A causal `model` graph without cache: every step reruns the sequence."""

    kind = "full_recompute"
    context: int


@dataclass(frozen=True, kw_only=True)
class EncoderDecoderConfig(TranslationConfig):
    """A transformer `encoder` (cross keys/values once) and `decoder_with_past` with a self-attention cache."""

    kind = "encoder_decoder"
    layers: int
    heads: int
    head_dim: int


def context_full(context: int) -> InputError:
    return InputError(
        f"generation reached the model's context of {context} positions (prompt + new tokens); "
        "lower max_new_tokens or shorten the prompt."
    )


def cache_presents(layers: int) -> dict[str, str]:
    """Each cache input of a decoder step graph (past_key_values.{i}.key / .value) -> the output that follows it
    (present.{i}.key / .value)."""
    return {f"past_key_values.{i}.{p}": f"present.{i}.{p}" for i in range(layers) for p in ("key", "value")}


def left_padded(prompts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, attention mask, position ids) [rows, longest] of left-padded prompts; positions count real tokens."""
    tokens, mask = pad_prompts(prompts, left=True)
    return tokens, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


class CachedLM:
    """TokenModel over a `decoder_with_past` graph: left-padded prefill, then one token per step.

    Left padding keeps every row's newest token in the last column; attention_mask hides the pads
    and position_ids count only real tokens, so each row decodes as if it were alone.
    """

    def __init__(self, runner: Runner, loop: KVCacheConfig, loop_graph: Runner | None = None) -> None:
        self.runner, self.loop, self.loop_graph = runner, loop, loop_graph
        self.vocab_size, self.context = len(loop.vocab), loop.context
        self.presents = cache_presents(loop.layers)
        self.feeds: dict[str, np.ndarray] = {}
        self.next_position = np.zeros(0, np.int64)

    def _run(self, tokens: np.ndarray, positions: np.ndarray, checked: bool) -> np.ndarray:
        out = self.runner.infer({"input_ids": tokens, "position_ids": positions, **self.feeds}, checked)
        for name, present in self.presents.items():
            self.feeds[name] = out[present]
        return out["logits"][:, -1]

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Prefill all prompts (left-padded) against an empty cache."""
        lengths = check_prompts(prompts, self.vocab_size, context=self.context)
        tokens, mask, positions = left_padded(prompts)
        empty = np.zeros((len(prompts), self.loop.heads, 0, self.loop.head_dim), np.float32)
        self.feeds = {"attention_mask": mask} | {name: empty for name in self.presents}
        self.next_position = lengths.copy()
        return self._run(tokens, positions, checked=False)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Decode one token per row against the cache."""
        if self.next_position.max() >= self.context:
            raise context_full(self.context)
        mask = self.feeds["attention_mask"]
        self.feeds["attention_mask"] = np.concatenate([mask, np.ones((len(mask), 1), np.int64)], 1)
        logits = self._run(tokens[:, None], self.next_position[:, None], checked=True)
        self.next_position = self.next_position + 1
        return logits

    def select(self, rows: np.ndarray) -> None:
        """Reorder cache, mask and positions along the batch."""
        self.feeds = {k: np.ascontiguousarray(v[rows]) for k, v in self.feeds.items()}
        self.next_position = self.next_position[rows]

    def generate_in_graph(self, prompts: Sequence[np.ndarray], uniforms: np.ndarray, config: SamplingConfig
                          ) -> np.ndarray | None:
        """The whole loop in the `generate` graph: prefill, then one decode per token after the first."""
        lengths = check_prompts(prompts, self.vocab_size, context=self.context)
        if self.loop_graph is None or lengths.max() + len(uniforms) - 1 > self.context:
            return None
        tokens, mask, positions = left_padded(prompts)
        feeds = {"input_ids": tokens, "position_ids": positions, "attention_mask": mask,
                 "uniforms": uniforms, "temperature": np.asarray([config.temperature], np.float64),
                 "top_k": np.asarray([config.top_k or 0], np.int64),
                 "top_p": np.asarray([2.0 if config.top_p is None else config.top_p], np.float64),
                 "stop": np.asarray([*config.stop, -1], np.int64)}  # -1 matches no token: never an empty stop list
        return self.loop_graph.infer(feeds)["tokens"]


class FullRecomputeLM:
    """TokenModel over a plain causal `model` graph: every step reruns the whole (right-padded) sequence.

    Right padding is safe without a mask because the model is causal: a row's logits at its last
    real token never see the pads after it.
    """

    def __init__(self, runner: Runner, loop: FullRecomputeConfig) -> None:
        self.runner, self.loop = runner, loop
        self.vocab_size, self.context = len(loop.vocab), loop.context
        self.buffer = np.zeros((0, self.context), np.int64)  # preallocated: rows x context
        self.lengths = np.zeros(0, np.int64)

    def _run(self, checked: bool) -> np.ndarray:
        width = int(self.lengths.max())
        logits = self.runner.infer({"tokens": np.ascontiguousarray(self.buffer[:, :width])}, checked)["logits"]
        return logits[np.arange(len(self.lengths)), self.lengths - 1]

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Run the prompts."""
        self.lengths = check_prompts(prompts, self.vocab_size, context=self.context)
        tokens, _ = pad_prompts(prompts)
        self.buffer = np.zeros((len(prompts), self.context), np.int64)
        self.buffer[:, : tokens.shape[1]] = tokens
        return self._run(checked=False)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Append one token per row and rerun."""
        if self.lengths.max() >= self.context:
            raise context_full(self.context)
        self.buffer[np.arange(len(tokens)), self.lengths] = tokens
        self.lengths = self.lengths + 1
        return self._run(checked=True)

    def select(self, rows: np.ndarray) -> None:
        """Reorder rows."""
        self.buffer, self.lengths = self.buffer[rows], self.lengths[rows]


class EncoderDecoderLM:
    """TokenModel over `encoder` + `decoder_with_past` graphs: start() encodes the sources once (cross
    keys/values) and runs bos; each step then decodes one token per row against the self-attention cache."""

    def __init__(self, runners: Runners, loop: EncoderDecoderConfig) -> None:
        self.encoder, self.decoder, self.loop = runners["encoder"], runners["decoder_with_past"], loop
        self.vocab_size = len(loop.tgt_vocab)
        layers = loop.layers
        self.past = [f"past_key_values.{i}.{p}" for i in range(layers) for p in ("key", "value")]
        self.cross = [f"cross.{i}.{p}" for i in range(layers) for p in ("key", "value")]
        self.feeds: dict[str, np.ndarray] = {}
        self.position = 0

    def _run(self, tokens: np.ndarray, checked: bool) -> np.ndarray:
        positions = np.full((len(tokens), 1), self.position, np.int64)
        out = self.decoder.infer({"input_ids": tokens[:, None], "position_ids": positions, **self.feeds}, checked)
        for name in self.past:
            self.feeds[name] = out[name.replace("past_key_values", "present")]
        self.position += 1
        return out["logits"][:, -1]

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Encode the (right-padded) sources, then run bos."""
        check_prompts(prompts, len(self.loop.src_vocab), "source")
        src, mask = pad_prompts(prompts)
        cross = self.encoder.infer({"src": src, "src_mask": mask})
        heads, head_dim = self.loop.heads, self.loop.head_dim
        empty = np.zeros((len(prompts), heads, 0, head_dim), np.float32)
        self.feeds = {"src_mask": mask} | {n: cross[n] for n in self.cross} | {n: empty for n in self.past}
        self.position = 0
        return self._run(np.full(len(prompts), self.loop.bos, np.int64), checked=False)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Decode one token per row."""
        if self.position > self.loop.max_target_length:
            raise InputError(f"decoding went past max_target_length {self.loop.max_target_length}.")
        return self._run(tokens, checked=True)

    def select(self, rows: np.ndarray) -> None:
        """Reorder caches, cross keys/values and the source mask along the batch."""
        self.feeds = {k: np.ascontiguousarray(v[rows]) for k, v in self.feeds.items()}


register(LoopKind(KVCacheConfig, "KV-cache LM", "generate", check=check_language_model, flips=explain_flips, writer=TEXT,
                  token_model=lambda runners, loop: CachedLM(runners[loop.role], loop, runners.get(GENERATE_ROLE))))
register(LoopKind(FullRecomputeConfig, "full-recompute LM", "generate", check=check_language_model, flips=explain_flips, writer=TEXT,
                  token_model=lambda runners, loop: FullRecomputeLM(runners[loop.role], loop)))
register(LoopKind(EncoderDecoderConfig, "encoder-decoder", "translate", check=check_translation, writer=TEXT,
                  token_model=EncoderDecoderLM, translate=translate_ids))
