"""`kv_in_place` loop kind: a causal decoder whose cache is one preallocated buffer per layer that each step writes
its new keys and values into, instead of a graph that returns past + new as fresh tensors every step.

The graph (family `gpt-inplace`, exporters/kv_in_place.py) takes per-layer buffers `past_key_values.{i}.key` /
`.value` [batch, heads, capacity, head_dim] and an attention mask over the positions used so far [batch, total]; it
writes the step's keys and values at positions total - seq .. total - 1 with one TensorScatter (opset 24) per buffer
and returns the buffers as `present.{i}.key` / `.value`. On onnxruntime's CPU provider the host loop binds each present
to its past's own memory, so the write is the only copy: nothing of the cache is copied or allocated per token
(other backends return new arrays, which the loop takes as its buffers). Capacity grows by GROWTH positions when the
buffers are full (one copy per GROWTH tokens); positions past the mask are hidden by causality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.base import Runner
from ..onnx_refs import graph_nodes
from .kinds import TEXT, LoopKind, register
from .tokens import check_language_model, check_prompts, explain_flips
from .transformer import KVCacheConfig, cache_presents, context_full, left_padded

# Positions added to the buffers when they are full. Attention reads the whole capacity (masked beyond the used
# positions), so a larger step wastes attention work; a smaller one copies the cache more often.
GROWTH = 32
ROLE = "decoder_in_place"


@dataclass(frozen=True, kw_only=True)
class KVInPlaceConfig(KVCacheConfig):
    """A causal decoder's `decoder_in_place` graph: past_key_values.{i}.key/value [batch, heads, capacity, head_dim]
    (the kv_cache loop's fields, another graph contract)."""

    kind = "kv_in_place"


class InPlaceLM:
    """TokenModel over a `decoder_in_place` graph: left-padded prefill, then one token per step, the cache written
    in place (see the module docstring)."""

    def __init__(self, runner: Runner, loop: KVInPlaceConfig) -> None:
        self.runner, self.loop = runner, loop
        self.vocab_size, self.context = len(loop.vocab), loop.context
        self.aliases = cache_presents(loop.layers)
        self.cache: dict[str, np.ndarray] = {}
        self.mask = np.zeros((0, 0), np.int64)
        self.next_position = np.zeros(0, np.int64)

    def _room(self, total: int) -> None:
        """Grow the buffers (copying what they hold) so that they hold `total` positions."""
        capacity = next(iter(self.cache.values())).shape[2]
        if total <= capacity:
            return
        grown = min(self.context, total + GROWTH - 1)
        for name, old in self.cache.items():
            new = np.zeros((*old.shape[:2], grown, old.shape[3]), np.float32)
            new[:, :, :capacity] = old
            self.cache[name] = new

    def _run(self, tokens: np.ndarray, positions: np.ndarray, checked: bool) -> np.ndarray:
        feeds = {"input_ids": tokens, "position_ids": positions, "attention_mask": self.mask, **self.cache}
        out = self.runner.infer(feeds, checked, aliases=self.aliases)
        for name, present in self.aliases.items():
            self.cache[name] = out[present]
        return out["logits"][:, -1]

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Prefill all prompts (left-padded) into fresh buffers."""
        lengths = check_prompts(prompts, self.vocab_size, context=self.context)
        tokens, self.mask, positions = left_padded(prompts)
        capacity = min(self.context, tokens.shape[1] + GROWTH)
        shape = (len(prompts), self.loop.heads, capacity, self.loop.head_dim)
        self.cache = {name: np.zeros(shape, np.float32) for name in self.aliases}
        self.next_position = lengths.copy()
        return self._run(tokens, positions, checked=False)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Decode one token per row into the buffers."""
        if self.next_position.max() >= self.context:
            raise context_full(self.context)
        self.mask = np.concatenate([self.mask, np.ones((len(self.mask), 1), np.int64)], 1)
        self._room(self.mask.shape[1])
        logits = self._run(tokens[:, None], self.next_position[:, None], checked=True)
        self.next_position = self.next_position + 1
        return logits

    def select(self, rows: np.ndarray) -> None:
        """Reorder buffers, mask and positions along the batch."""
        self.cache = {k: np.ascontiguousarray(v[rows]) for k, v in self.cache.items()}
        self.mask, self.next_position = np.ascontiguousarray(self.mask[rows]), self.next_position[rows]


def in_place_problems(graphs: Mapping[str, Path]) -> list[str]:
    """Where a `decoder_in_place` graph reads a cache buffer other than through the TensorScatter that writes its
    present (or where that write is not the present output itself): aliasing past and present would be wrong there.
    Read from the file's wire format: no onnx import, cheap at any model size."""
    if ROLE not in graphs:
        return []
    inputs, nodes = graph_nodes(graphs[ROLE])
    problems = []
    for name in (i for i in inputs if i.startswith("past_key_values.")):
        present = name.replace("past_key_values", "present")
        readers = [n for n in nodes if name in n.reads]
        writes = [n for n in readers if n.op_type == "TensorScatter" and n.domain in ("", "ai.onnx")
                  and n.inputs.index(name) == 0 and n.outputs[:1] == (present,)]
        others = sorted({f"{n.op_type} ({n.name or 'unnamed'})" for n in readers
                         if n not in writes and n.op_type != "Shape"})
        if len(writes) != 1 or others:
            problems.append(f"'{name}' must be read only by the TensorScatter that writes '{present}' (found "
                            f"{len(writes)} such writes; other readers: {', '.join(others) or 'none'}), or writing "
                            "the cache in place would change what the graph computes; export as 'gpt'")
    return problems


register(LoopKind(KVInPlaceConfig, "in-place KV-cache LM", "generate", check=check_language_model, flips=explain_flips,
                  writer=TEXT, token_model=lambda runners, loop: InPlaceLM(runners[loop.role], loop),
                  graph_problems=in_place_problems))
