"""Reference transformers: a causal decoder (GPT) with a KV cache, an encoder-decoder, a ViT.

Attention keeps keys and values per layer as [batch, heads, length, head_dim]; the cached forward
takes the past ones and returns the present ones (past + new), so a runtime can decode one token
at a time. Masks are additive biases built from an explicit attention_mask (1 = attend).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .recurrent import DIGITS

KV = tuple[torch.Tensor, torch.Tensor]
NEG = -1e9  # masked logits; finite so a fully masked (padding) row softmaxes to uniform, not NaN


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal position encodings (Vaswani et al. 2017) for integer positions [...] -> [..., dim]."""
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / dim))
    angle = positions.to(torch.float32).unsqueeze(-1) * freq
    return torch.stack([angle.sin(), angle.cos()], -1).flatten(-2)


class Attention(nn.Module):
    """Multi-head attention over [past keys/values + this call's], with an additive bias."""

    def __init__(self, dim: int, heads: int, cross: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.cross = cross

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, dim] -> [B, heads, T, head_dim]."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KV:
        """Keys and values of x, [B, heads, T, head_dim] each."""
        k, v = self.kv(x).chunk(2, -1)
        return self.split(k), self.split(v)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, past: KV) -> tuple[torch.Tensor, KV]:
        """Attend from x to past + x's own keys (self) or to the given keys (cross); returns (y, keys/values used)."""
        if self.cross:
            k, v = past
        else:
            k_new, v_new = self.keys_values(x)
            k, v = torch.cat([past[0], k_new], 2), torch.cat([past[1], v_new], 2)
        q = self.split(self.q(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).flatten(-2)
        return self.out(y), (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, dim: int, heads: int, cross: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)  # training only: identity in eval mode and in the exported graph
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ln_cross = nn.LayerNorm(dim) if cross else None
        self.cross = Attention(dim, heads, cross=True) if cross else None
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, past: KV, cross_kv: KV | None = None, cross_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KV]:
        y, present = self.attn(self.ln1(x), bias, past)
        x = x + self.drop(y)
        if self.cross is not None:
            x = x + self.drop(self.cross(self.ln_cross(x), cross_bias, cross_kv)[0])
        return x + self.drop(self.mlp(self.ln2(x))), present


def causal_bias(attention_mask: torch.Tensor, queries: int) -> torch.Tensor:
    """[B, 1, queries, total] additive bias: query i (the last `queries` of `total` positions) sees keys <= itself
    that attention_mask [B, total] marks with 1."""
    total = attention_mask.shape[1]
    key = torch.arange(total, device=attention_mask.device)
    query = key[total - queries :].unsqueeze(1)
    allowed = (key[None, :] <= query)[None, None] & (attention_mask[:, None, None, :] > 0)
    return torch.where(allowed, 0.0, NEG)


def padding_bias(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1, S] additive bias from a [B, S] mask (1 = attend)."""
    return torch.where(mask[:, None, None, :] > 0, 0.0, NEG)


class GPT(nn.Module):
    """Decoder-only causal LM (Radford et al. 2018) with learned or sinusoidal positions and a KV cache."""

    def __init__(
        self, vocab: str = "ab", context: int = 640, dim: int = 96, heads: int = 4, layers: int = 2,
        positions: str = "learned", dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab, self.context, self.layers, self.heads, self.positions = vocab, context, layers, heads, positions
        self.head_dim = dim // heads
        self.embed = nn.Embedding(len(vocab), dim)
        self.pos = nn.Embedding(context, dim) if positions == "learned" else None
        self.blocks = nn.ModuleList(Block(dim, heads, dropout=dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(vocab))

    def position_encoding(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Learned embedding or sinusoid of each position id."""
        if self.pos is not None:
            return self.pos(position_ids)
        return sinusoidal(position_ids, self.embed.embedding_dim)

    def forward_cached(
        self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, past: list[KV]
    ) -> tuple[torch.Tensor, list[KV]]:
        """Logits [B, T, V] for tokens [B, T] after `past` (per layer [B, heads, P, head_dim]); attention_mask
        covers P + T positions. Returns the present keys/values (P + T long)."""
        x = self.embed(tokens) + self.position_encoding(position_ids)
        bias = causal_bias(attention_mask, tokens.shape[1])
        presents = []
        for block, kv in zip(self.blocks, past):
            x, present = block(x, bias, kv)
            presents.append(present)
        return self.head(self.ln(x)), presents

    def empty_past(self, batch: int) -> list[KV]:
        """Zero-length keys/values for every layer."""
        z = torch.zeros(batch, self.heads, 0, self.head_dim)
        return [(z, z) for _ in range(self.layers)]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits without padding (training and the no-cache path)."""
        batch, time = tokens.shape
        positions = torch.arange(time, device=tokens.device).expand(batch, time)
        mask = torch.ones(batch, time, dtype=torch.int64, device=tokens.device)
        return self.forward_cached(tokens, positions, mask, self.empty_past(batch))[0]


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder transformer (Vaswani et al. 2017), pre-LN, sinusoidal positions; reverses digit strings.

    Cross-attention keys/values depend only on the encoder output, so they are computed once per
    source (cross_kv) and passed to every decoding step.
    """

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, max_target_length: int = 16) -> None:
        super().__init__()
        self.src_vocab = DIGITS
        self.tgt_vocab = [*DIGITS, "<bos>", "<eos>"]
        self.bos, self.eos, self.max_target_length = 10, 11, max_target_length
        self.layers, self.heads, self.head_dim = layers, heads, dim // heads
        self.src_embed = nn.Embedding(len(self.src_vocab), dim)
        self.tgt_embed = nn.Embedding(len(self.tgt_vocab), dim)
        self.encoder = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.decoder = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(layers))
        self.ln_enc, self.ln_dec = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(self.tgt_vocab))

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Memory [B, S, dim] of source tokens [B, S] (src_mask 1 = real token)."""
        positions = torch.arange(src.shape[1], device=src.device).expand_as(src)
        x = self.src_embed(src) + sinusoidal(positions, self.src_embed.embedding_dim)
        bias = padding_bias(src_mask)
        empty = x.new_zeros(x.shape[0], self.heads, 0, self.head_dim)
        for block in self.encoder:
            x = block(x, bias, (empty, empty))[0]
        return self.ln_enc(x)

    def cross_kv(self, memory: torch.Tensor) -> list[KV]:
        """Cross-attention keys and values of every decoder layer."""
        return [block.cross.keys_values(memory) for block in self.decoder]

    def decode_cached(
        self, tokens: torch.Tensor, position_ids: torch.Tensor, src_mask: torch.Tensor, past: list[KV], cross: list[KV]
    ) -> tuple[torch.Tensor, list[KV]]:
        """Logits [B, T, V] for target tokens [B, T] after `past`; returns the present self-attention keys/values."""
        x = self.tgt_embed(tokens) + sinusoidal(position_ids, self.tgt_embed.embedding_dim)
        total = past[0][0].shape[2] + tokens.shape[1]
        bias = causal_bias(torch.ones(tokens.shape[0], total, dtype=torch.int64, device=tokens.device), tokens.shape[1])
        cross_bias = padding_bias(src_mask)
        presents = []
        for block, kv, ckv in zip(self.decoder, past, cross):
            x, present = block(x, bias, kv, ckv, cross_bias)
            presents.append(present)
        return self.head(self.ln_dec(x)), presents

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] for target inputs tgt_in (bos + target)."""
        src_mask = (torch.arange(src.shape[1])[None, :] < src_lengths[:, None]).long()
        cross = self.cross_kv(self.encode(src, src_mask))
        empty = src.new_zeros(src.shape[0], self.heads, 0, self.head_dim, dtype=torch.float32)
        positions = torch.arange(tgt_in.shape[1]).expand_as(tgt_in)
        return self.decode_cached(tgt_in, positions, src_mask, [(empty, empty)] * self.layers, cross)[0]


class ViT(nn.Module):
    """Vision transformer classifier (Dosovitskiy et al. 2021): patch embedding, class token, learned positions."""

    def __init__(self, image: int = 8, patch: int = 2, channels: int = 1, dim: int = 64, heads: int = 4,
                 layers: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.input_shape = (channels, image, image)
        self.patches = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patches(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        bias = x.new_zeros(1, 1, 1, x.shape[1])
        empty = x.new_zeros(x.shape[0], self.blocks[0].attn.heads, 0, self.blocks[0].attn.head_dim)
        for block in self.blocks:
            x = block(x, bias, (empty, empty))[0]
        return self.head(self.ln(x[:, 0]))
