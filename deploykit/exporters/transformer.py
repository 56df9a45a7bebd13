"""Transformer families: causal decoder with KV cache (`gpt`), full-recompute decoder (`gpt-nocache`), ViT.

The cached graph takes per-layer past keys/values `past_key_values.{i}.key` / `.value`
[batch, heads, past, head_dim] and returns `present.{i}.key` / `.value` [batch, heads, total, head_dim]
with total = past + seq; an empty past (past = 0) is the prefill. position_ids and attention_mask are
explicit, so left-padded batches of prompts of different lengths decode correctly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..specs import DimRule, TensorSpec
from .feedforward import BATCHES, classifier_roles
from .recurrent import vocabulary
from .registry import Family, Role, Tolerance, attribute, register

GPT_PROTOCOL = (
    "`vocab` (str or list of tokens), `context` (max positions), `layers`, `heads`, `head_dim` and "
    "forward_cached(tokens [B, T], position_ids [B, T], attention_mask [B, P + T] (1 = attend), "
    "past: list of (key, value) [B, heads, P, head_dim] per layer) -> (logits [B, T, vocab], presents)."
)
NOCACHE_PROTOCOL = (
    "`vocab` and `context`; forward(tokens [B, T]) -> logits [B, T, vocab], causal (position t sees tokens <= t). "
    "No cache needed: generation recomputes the whole sequence each step."
)
VIT_PROTOCOL = "`input_shape` = (C, H, W); forward(image) -> logits [batch, classes]. Batch is dynamic."


class DecoderWithPast(nn.Module):
    """forward_cached with the past flattened into named tensors (key, value per layer)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """(logits, present.0.key, present.0.value, ...)."""
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        logits, presents = self.model.forward_cached(input_ids, position_ids, attention_mask, pairs)
        return (logits, *(t for kv in presents for t in kv))


def past_names(layers: int, prefix: str = "past_key_values") -> list[str]:
    """Per-layer key/value tensor names, in graph order."""
    return [f"{prefix}.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def _gpt_config(model: nn.Module) -> dict[str, int]:
    attribute(model, "forward_cached", "gpt", GPT_PROTOCOL)
    return {k: int(attribute(model, k, "gpt", GPT_PROTOCOL)) for k in ("context", "layers", "heads", "head_dim")}


def _gpt_roles(model: nn.Module) -> dict[str, Role]:
    cfg = _gpt_config(model)
    vocab = len(vocabulary(model, "vocab", "gpt", GPT_PROTOCOL))
    inputs = (
        TensorSpec("input_ids", "int64", ("batch", "seq"), high=vocab),
        TensorSpec("position_ids", "int64", ("batch", "seq"), high=cfg["context"]),
        TensorSpec("attention_mask", "int64", ("batch", "total"), high=2),
        *(TensorSpec(n, "float32", ("batch", cfg["heads"], "past", cfg["head_dim"])) for n in past_names(cfg["layers"])),
    )
    outputs = ("logits", *past_names(cfg["layers"], "present"))
    example = {"batch": 2, "seq": 3, "past": 4, "total": 7}
    dims = {"total": DimRule(min=1, sum_of=("past", "seq"))}
    return {"decoder_with_past": Role(DecoderWithPast(model), inputs, outputs, example, dims)}


def _gpt_loop(model: nn.Module) -> dict[str, Any]:
    cfg = _gpt_config(model)
    return {"kind": "kv_cache", "role": "decoder_with_past", "vocab": vocabulary(model, "vocab", "gpt", GPT_PROTOCOL)} | cfg


# prefill (empty past), single-token decode after a long past, a chunk after a short past
GPT_SHAPES = [
    {"batch": 1, "seq": 1, "past": 0, "total": 1},
    {"batch": 3, "seq": 12, "past": 0, "total": 12},
    {"batch": 3, "seq": 1, "past": 200, "total": 201},
    {"batch": 2, "seq": 5, "past": 9, "total": 14},
]


def _nocache_roles(model: nn.Module) -> dict[str, Role]:
    vocab = len(vocabulary(model, "vocab", "gpt-nocache", NOCACHE_PROTOCOL))
    attribute(model, "context", "gpt-nocache", NOCACHE_PROTOCOL)
    tokens = TensorSpec("tokens", "int64", ("batch", "time"), high=vocab)
    return {"model": Role(model, (tokens,), ("logits",), {"batch": 2, "time": 3})}


def _nocache_loop(model: nn.Module) -> dict[str, Any]:
    return {"kind": "full_recompute", "role": "model", "context": int(model.context),
            "vocab": vocabulary(model, "vocab", "gpt-nocache", NOCACHE_PROTOCOL)}


# Tolerances, fp32: LayerNorm, softmax and GELU (erf) are recomputed by ORT's kernels with other
# summation orders; logits of a 2-layer model stay within ~1e-5 (worst seen noted beside each).
register(Family("gpt", "causal decoder with KV cache: prefill and decode from one graph", GPT_PROTOCOL,
                _gpt_roles, lambda m: GPT_SHAPES, Tolerance(1e-4, 1e-4), _gpt_loop))
register(Family("gpt-nocache", "causal decoder without cache: generation recomputes the sequence", NOCACHE_PROTOCOL,
                _nocache_roles, lambda m: [{"batch": 1, "time": 1}, {"batch": 3, "time": 40}], Tolerance(1e-4, 1e-4),
                _nocache_loop))
register(Family("vit", "vision transformer classifier", VIT_PROTOCOL, classifier_roles("image", VIT_PROTOCOL, "vit"),
                lambda m: BATCHES, Tolerance(1e-4, 1e-3), lambda m: {"kind": "classifier"}))
