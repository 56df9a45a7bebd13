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

from ..loop_graphs import IN_GRAPH_MAX_BYTES
from ..runtimes.graphs import ClassifierConfig
from ..runtimes.tokens import lm_fields
from ..runtimes.transformer import EncoderDecoderConfig, FullRecomputeConfig, KVCacheConfig
from ..specs import DimRule, TensorSpec
from .feedforward import BATCHES, classifier_roles
from .onnx_export import weight_bytes
from .recurrent import vocabulary
from .registry import Family, Role, Tolerance, attribute, register

GPT_PROTOCOL = (
    "`vocab` (str or list of tokens), `context` (max positions), `layers`, `heads`, `head_dim` and "
    "forward_cached(tokens [B, T], position_ids [B, T], attention_mask [B, P + T] (1 = attend), "
    "past: list of (key, value) [B, heads, P, head_dim] per layer) -> (logits [B, T, vocab], presents); "
    "optionally `eos_token_id` (generation stops there)."
)
NOCACHE_PROTOCOL = (
    "`vocab` and `context`; forward(tokens [B, T]) -> logits [B, T, vocab], causal (position t sees tokens <= t). "
    "No cache needed: generation recomputes the whole sequence each step."
)
ENCDEC_PROTOCOL = (
    "`src_vocab`, `tgt_vocab`, `bos`, `eos`, `max_target_length`, `layers`, `heads`, `head_dim`; "
    "encode(src [B, S], src_mask [B, S]) -> memory; cross_kv(memory) -> [(key, value)] per decoder layer; "
    "decode_cached(tokens [B, T], position_ids [B, T], src_mask, past [(key, value)], cross [(key, value)]) "
    "-> (logits [B, T, vocab], presents)."
)
VIT_PROTOCOL = "`input_shape` = (C, H, W); forward(image) -> logits [batch, classes]. Batch is dynamic."


def pairs(flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(k0, v0, k1, v1, ...) -> [(k0, v0), (k1, v1), ...]."""
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def flat_pairs(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """Inverse of pairs."""
    return tuple(t for pair in kv for t in pair)


class DecoderWithPast(nn.Module):
    """The model's cached step (`method`: forward_cached, or gpt-inplace's forward_in_place) with the cache
    flattened into named tensors (key, value per layer)."""

    def __init__(self, model: nn.Module, method: str = "forward_cached") -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """(logits, present.0.key, present.0.value, ...)."""
        logits, presents = getattr(self.model, self.method)(input_ids, position_ids, attention_mask, pairs(past))
        return (logits, *flat_pairs(presents))


def past_names(layers: int, prefix: str = "past_key_values") -> list[str]:
    """Per-layer key/value tensor names, in graph order."""
    return [f"{prefix}.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def decoder_config(model: nn.Module, family: str, protocol: str, method: str) -> dict[str, int]:
    """A cached decoder's context, layers, heads and head_dim; ExportError naming `method` or a field it lacks."""
    attribute(model, method, family, protocol)
    return {k: int(attribute(model, k, family, protocol)) for k in ("context", "layers", "heads", "head_dim")}


def decoder_specs(model: nn.Module, family: str, protocol: str, method: str, cache: str
                  ) -> tuple[tuple[TensorSpec, ...], tuple[str, ...], dict[str, DimRule]]:
    """Inputs, outputs and dim rules of a cached decoder step whose per-layer key/value inputs span `cache`
    positions (the past, or a buffer's capacity)."""
    cfg = decoder_config(model, family, protocol, method)
    vocab = len(vocabulary(model, "vocab", family, protocol))
    inputs = (
        TensorSpec("input_ids", "int64", ("batch", "seq"), high=vocab),
        TensorSpec("position_ids", "int64", ("batch", "seq"), high=cfg["context"]),
        TensorSpec("attention_mask", "int64", ("batch", "total"), high=2, padding="past"),  # left-padded cache
        *(TensorSpec(n, "float32", ("batch", cfg["heads"], cache, cfg["head_dim"])) for n in past_names(cfg["layers"])),
    )
    outputs = ("logits", *past_names(cfg["layers"], "present"))
    context = cfg["context"]  # positions past it do not exist: code may slice a [context, context] causal buffer
    dims = {"seq": DimRule(min=1, max=context), "past": DimRule(min=0, max=context - 1),
            "total": DimRule(min=1, max=context, sum_of=("past", "seq"))} | (
        {} if cache == "past" else {cache: DimRule(min=1, max=context)})
    return inputs, outputs, dims


def _gpt_roles(model: nn.Module) -> dict[str, Role]:
    inputs, outputs, dims = decoder_specs(model, "gpt", GPT_PROTOCOL, "forward_cached", "past")
    example = {"batch": 2, "seq": 3, "past": 4, "total": 7}
    return {"decoder_with_past": Role(DecoderWithPast(model), inputs, outputs, example, dims)}


def _gpt_loop(model: nn.Module) -> KVCacheConfig:
    return KVCacheConfig(role="decoder_with_past", vocab=vocabulary(model, "vocab", "gpt", GPT_PROTOCOL),
                         **decoder_config(model, "gpt", GPT_PROTOCOL, "forward_cached"),
                         **lm_fields(model, weight_bytes(model)), in_graph=weight_bytes(model) <= IN_GRAPH_MAX_BYTES)


# prefill (empty past), single-token decode after a long past, a chunk after a short past; `room`: the free positions
# after them in an in-place cache's buffer (gpt-inplace)
DECODER_SHAPES = [
    {"batch": 1, "seq": 1, "past": 0, "room": 0},
    {"batch": 3, "seq": 12, "past": 0, "room": 32},
    {"batch": 3, "seq": 1, "past": 200, "room": 31},
    {"batch": 2, "seq": 5, "past": 9, "room": 0},
]


def decoder_shapes(model: nn.Module, family: str, protocol: str, cache: str) -> list[dict[str, int]]:
    """DECODER_SHAPES within the model's context (a context of 64 checks a cache of 63, not 200), with the `cache`
    dim of the key/value inputs where it is not the past."""
    context = int(attribute(model, "context", family, protocol))
    shapes = []
    for shape in DECODER_SHAPES:
        seq = min(shape["seq"], context)
        past = min(shape["past"], context - seq)
        dims = {"batch": shape["batch"], "seq": seq, "past": past, "total": past + seq}
        shapes.append(dims if cache == "past" else dims | {cache: min(context, past + seq + shape["room"])})
    return shapes


def _nocache_roles(model: nn.Module) -> dict[str, Role]:
    vocab = len(vocabulary(model, "vocab", "gpt-nocache", NOCACHE_PROTOCOL))
    attribute(model, "context", "gpt-nocache", NOCACHE_PROTOCOL)
    tokens = TensorSpec("tokens", "int64", ("batch", "time"), high=vocab)
    return {"model": Role(model, (tokens,), ("logits",), {"batch": 2, "time": 3})}


def _nocache_loop(model: nn.Module) -> FullRecomputeConfig:
    return FullRecomputeConfig(role="model", context=int(model.context),
                               vocab=vocabulary(model, "vocab", "gpt-nocache", NOCACHE_PROTOCOL), **lm_fields(model, weight_bytes(model)))


class EncoderWithCross(nn.Module):
    """Source -> every decoder layer's cross-attention keys and values (computed once per source)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(cross.0.key, cross.0.value, ...)."""
        return flat_pairs(self.model.cross_kv(self.model.encode(src, src_mask)))


class CrossDecoderWithPast(nn.Module):
    """decode_cached with past and cross keys/values flattened into named tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, src_mask: torch.Tensor, *kv: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """(logits, present.0.key, present.0.value, ...); kv holds the past pairs, then the cross pairs."""
        both = pairs(kv)
        past, cross = both[: self.model.layers], both[self.model.layers :]
        logits, presents = self.model.decode_cached(input_ids, position_ids, src_mask, past, cross)
        return (logits, *flat_pairs(presents))


def encdec_config(model: nn.Module) -> dict[str, Any]:
    for part in ("encode", "cross_kv", "decode_cached", "bos", "eos"):
        attribute(model, part, "transformer-seq2seq", ENCDEC_PROTOCOL)
    cfg: dict[str, Any] = {
        k: int(attribute(model, k, "transformer-seq2seq", ENCDEC_PROTOCOL))
        for k in ("layers", "heads", "head_dim", "max_target_length", "bos", "eos")
    }
    for k in ("src_vocab", "tgt_vocab"):
        cfg[k] = vocabulary(model, k, "transformer-seq2seq", ENCDEC_PROTOCOL)
    return cfg


def encdec_roles(model: nn.Module) -> dict[str, Role]:
    cfg = encdec_config(model)
    heads, head_dim, layers = cfg["heads"], cfg["head_dim"], cfg["layers"]
    src_mask = TensorSpec("src_mask", "int64", ("batch", "src_time"), high=2, padding="src_time", pad_right=True)  # as batches are
    cross = [TensorSpec(n, "float32", ("batch", heads, "src_time", head_dim)) for n in past_names(layers, "cross")]
    decoder_inputs = (
        TensorSpec("input_ids", "int64", ("batch", "seq"), high=len(cfg["tgt_vocab"])),
        TensorSpec("position_ids", "int64", ("batch", "seq"), high=cfg["max_target_length"] + 1),
        src_mask,
        *(TensorSpec(n, "float32", ("batch", heads, "past", head_dim)) for n in past_names(layers)),
        *cross,
    )
    return {
        "encoder": Role(EncoderWithCross(model), (TensorSpec("src", "int64", ("batch", "src_time"), high=len(cfg["src_vocab"])),
                        src_mask), tuple(s.name for s in cross), {"batch": 2, "src_time": 3}),
        "decoder_with_past": Role(CrossDecoderWithPast(model), decoder_inputs, ("logits", *past_names(layers, "present")),
                                  {"batch": 2, "seq": 3, "past": 4, "src_time": 5}),
    }


def _encdec_loop(model: nn.Module) -> EncoderDecoderConfig:
    return EncoderDecoderConfig(**encdec_config(model))


def encdec_shapes(model: nn.Module) -> list[dict[str, int]]:
    """A one-token source and first step, a step after a past of 6, a chunk of 5 after 3 against a source of 30."""
    return [{"batch": 1, "src_time": 1, "seq": 1, "past": 0}, {"batch": 4, "src_time": 9, "seq": 1, "past": 6},
            {"batch": 2, "src_time": 30, "seq": 5, "past": 3}]


# Tolerances, fp32: LayerNorm, softmax and GELU (erf) are recomputed by ORT's kernels with other
# summation orders, and logits sum over the width. Worst max-abs error over 10 fresh seeds on the
# trained zoo models (ORT-CPU 1.31 vs torch 2.13), noted beside each, leaves >= 5x headroom.
# Generated and beam-searched tokens compare exactly.
register(Family("gpt", "causal decoder with KV cache: prefill and decode from one graph", GPT_PROTOCOL,
                _gpt_roles, lambda m: decoder_shapes(m, "gpt", GPT_PROTOCOL, "past"), Tolerance(1e-4, 1e-4),
                ("kv_cache",), _gpt_loop))  # seen 1.7e-5
register(Family("gpt-nocache", "causal decoder without cache: generation recomputes the sequence", NOCACHE_PROTOCOL,
                _nocache_roles, lambda m: [{"batch": 1, "time": 1}, {"batch": 3, "time": 40}], Tolerance(1e-4, 1e-4),
                ("full_recompute",), _nocache_loop))  # seen 3.3e-6
register(Family("transformer-seq2seq", "encoder-decoder transformer: encoder (cross keys/values once) + decoder with past",
                ENCDEC_PROTOCOL, encdec_roles, encdec_shapes, Tolerance(1e-4, 1e-4), ("encoder_decoder",), _encdec_loop))  # seen 3.1e-6
register(Family("vit", "vision transformer classifier", VIT_PROTOCOL, classifier_roles("image", VIT_PROTOCOL, "vit"),
                lambda m: BATCHES, Tolerance(1e-4, 1e-3), ("classifier",), lambda m: ClassifierConfig()))  # seen 6.2e-6
