"""Reference recurrent models: streaming LSTM denoiser, char LM, seq2seq with attention, VRNN.

Each follows its family's protocol in deploykit/exporters/recurrent.py; training code in train.py
uses their forward() (teacher forcing), export uses their parts.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class StreamingDenoiser(nn.Module):
    """Stacked LSTM that cleans a noisy multi-tone signal sample by sample (causal, streamable)."""

    def __init__(self, features: int = 1, hidden: int = 48, layers: int = 2) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class CharLM(nn.Module):
    """Character-level LSTM language model (Graves 2013 style, one layer)."""

    def __init__(self, vocab: str = "ab", embed: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(len(vocab), embed)
        self.rnn = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, len(vocab))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


class LuongAttention(nn.Module):
    """'general' attention (Luong et al. 2015): score = q^T W m, masked softmax over source steps."""

    def __init__(self, query: int, memory: int) -> None:
        super().__init__()
        self.proj = nn.Linear(memory, query, bias=False)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.einsum("bh,bsh->bs", query, self.proj(memory)).masked_fill(~mask, -1e9)
        weights = scores.softmax(-1)
        return torch.einsum("bs,bsm->bm", weights, memory), weights


DIGITS = "0123456789"


class Seq2Seq(nn.Module):
    """Bidirectional-GRU encoder, GRU decoder with Luong attention (Bahdanau et al. 2015; Luong et al. 2015)."""

    def __init__(self, embed: int = 32, hidden: int = 96, max_target_length: int = 16) -> None:
        super().__init__()
        self.src_vocab = DIGITS
        self.tgt_vocab = [*DIGITS, "<bos>", "<eos>"]
        self.bos, self.eos = 10, 11
        self.max_target_length = max_target_length
        self.src_embed = nn.Embedding(len(self.src_vocab), embed)
        self.encoder = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.bridge = Bridge(2 * hidden, hidden)
        self.tgt_embed = nn.Embedding(len(self.tgt_vocab), embed)
        self.decoder = nn.GRU(embed, hidden, batch_first=True)
        self.attention = LuongAttention(hidden, 2 * hidden)
        self.head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, len(self.tgt_vocab)))

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] for target inputs tgt_in (bos + target)."""
        packed = pack_padded_sequence(self.src_embed(src), src_lengths, batch_first=True, enforce_sorted=False)
        memory, h = self.encoder(packed)
        memory, _ = pad_packed_sequence(memory, batch_first=True, total_length=src.shape[1])
        out, _ = self.decoder(self.tgt_embed(tgt_in), self.bridge(h))
        mask = torch.arange(src.shape[1])[None, :] < src_lengths[:, None]
        steps = [self.attention(out[:, t], memory, mask)[0] for t in range(out.shape[1])]
        return self.head(torch.cat([out, torch.stack(steps, 1)], -1))


class Bridge(nn.Module):
    """Encoder final states [2, B, H] (both directions) -> decoder initial state [1, B, H]."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(inputs, hidden)

    def forward(self, h_n: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(torch.cat([h_n[-2], h_n[-1]], -1))).unsqueeze(0)


def _gaussian(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = net(inputs).chunk(2, -1)
    return mu, logvar.clamp(-8.0, 4.0)


class VRNN(nn.Module):
    """Variational RNN (Chung et al. 2015): per-step prior p(z_t | h), decoder p(x_t | z_t, h), GRU cell."""

    def __init__(self, x_dim: int = 2, z_dim: int = 4, hidden_size: int = 48, steps: int = 24) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.hidden_size, self.steps = x_dim, z_dim, hidden_size, steps
        h = hidden_size
        self.phi_x = nn.Sequential(nn.Linear(x_dim, h), nn.ReLU())
        self.phi_z = nn.Sequential(nn.Linear(z_dim, h), nn.ReLU())
        self.prior = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2 * z_dim))
        self.encoder = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 2 * x_dim))
        self.cell = nn.GRUCell(2 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per sequence (nats), x [B, T, x_dim]; reparameterized with fresh noise."""
        h = x.new_zeros(x.shape[0], self.hidden_size)
        loss = x.new_zeros(x.shape[0])
        for t in range(x.shape[1]):
            fx = self.phi_x(x[:, t])
            mu_p, lv_p = _gaussian(self.prior, h)
            mu_q, lv_q = _gaussian(self.encoder, torch.cat([fx, h], -1))
            z = mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp()
            fz = self.phi_z(z)
            mu_x, lv_x = _gaussian(self.decoder, torch.cat([fz, h], -1))
            nll = 0.5 * (lv_x + (x[:, t] - mu_x) ** 2 / lv_x.exp() + 1.8378770664093453).sum(-1)
            kl = 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum(-1)
            loss = loss + nll + kl
            h = self.cell(torch.cat([fx, fz], -1), h)
        return loss

    def sample_step(
        self, h: torch.Tensor, eps_z: torch.Tensor, eps_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One generation step with injected standard-normal noise: (x_t, z_t, h_t)."""
        mu_p, lv_p = _gaussian(self.prior, h)
        z = mu_p + eps_z * (0.5 * lv_p).exp()
        fz = self.phi_z(z)
        mu_x, lv_x = _gaussian(self.decoder, torch.cat([fz, h], -1))
        x = mu_x + eps_x * (0.5 * lv_x).exp()
        return x, z, self.cell(torch.cat([self.phi_x(x), fz], -1), h)
