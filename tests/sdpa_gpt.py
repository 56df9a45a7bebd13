"""A user-style GPT following deploykit's gpt protocol: scaled_dot_product_attention over a KV cache, with a
boolean mask (causal & attention_mask), the pattern most user and library code has."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(w, -1)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = self.attend(q, k, v, attention_mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.ln2(x)), (k, v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t, total = q.shape[2], k.shape[2]
        causal = torch.ones(t, total, dtype=torch.bool, device=q.device).tril(total - t)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SdpaGPT(nn.Module):
    def __init__(self, vocab: str = "abcdefgh .", width: int = 32, heads: int = 4, layers: int = 2, context: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vocab, self.context, self.layers, self.heads, self.head_dim = vocab, context, layers, heads, width // heads
        self.embed, self.pos = nn.Embedding(len(vocab), width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, len(vocab))

    def forward_cached(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                       past: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list]:
        x = self.embed(tokens) + self.pos(position_ids)
        presents = []
        for block, kv in zip(self.blocks, past):
            x, present = block(x, attention_mask, kv)
            presents.append(present)
        return self.head(self.ln(x)), presents


def build_model() -> SdpaGPT:
    return SdpaGPT().eval()


class BufferBlock(Block):
    """nanoGPT's / GPT-2's causal mask: a registered [1, 1, context, context] buffer sliced by the cache length."""

    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__(width, heads)
        self.register_buffer("bias", torch.ones(context, context, dtype=torch.bool).tril()[None, None], persistent=False)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t, total = q.shape[2], k.shape[2]
        visible = self.bias[:, :, total - t:total, :total] & attention_mask[:, None, None, :].bool()
        scores = (q @ k.transpose(-2, -1)) / self.head_dim**0.5
        return F.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v


def build_buffer_model(buffer: int | None = None) -> SdpaGPT:
    """The buffer pattern with a [buffer, buffer] mask (default: the model's context)."""
    model = SdpaGPT()
    model.blocks = nn.ModuleList(BufferBlock(32, 4, buffer or model.context) for _ in range(model.layers))
    return model.eval()
