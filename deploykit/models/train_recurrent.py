"""Training loops for the sequence zoo (denoiser, char LM, seq2seq, VRNN, GPT); under a minute each on 2 cores."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import digit_strings, noisy_tones, python_text, trajectories
from .train import OnStep, _fit


def train_denoiser(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """MSE between the model's output on noisy tones and the clean tones; returns test MSE and the noise MSE."""
    noisy, clean = (torch.from_numpy(a) for a in noisy_tones(2048, 64, seed=0))
    _fit(model, lambda i: F.mse_loss(model(noisy[i]), clean[i]), len(noisy), steps, on_step)
    test_noisy, test_clean = (torch.from_numpy(a) for a in noisy_tones(256, 256, seed=1))
    with torch.no_grad():
        mse = float(F.mse_loss(model(test_noisy), test_clean))
    return {"test_mse": mse, "input_noise_mse": float(F.mse_loss(test_noisy, test_clean))}


def char_windows(text: str, vocab: str, length: int) -> torch.Tensor:
    """All windows of `length` + 1 characters of `text` as token ids [N, length + 1]."""
    ids = torch.tensor([vocab.index(c) for c in text])
    return ids.unfold(0, length + 1, 1)


def lm_vocab() -> str:
    """The character vocabulary of the char-LM corpus (sorted)."""
    return "".join(sorted(set(python_text())))


def train_char_lm(
    model: nn.Module, steps: int, on_step: OnStep, window: int = 64, lr: float = 5e-3, batch: int = 64
) -> dict[str, float]:
    """Next-character cross-entropy on python_text(); every 10th 256-character block is held out.

    Returns held-out bits per character (uniform over the vocabulary would be log2(vocab) ~ 6.3).
    """
    text = python_text()
    blocks = [text[i : i + 256] for i in range(0, len(text), 256)]
    held_out = blocks[5::10]
    kept = [b for i, b in enumerate(blocks) if i % 10 != 5 and len(b) > window]
    train = torch.cat([char_windows(b, model.vocab, window) for b in kept])

    def loss(i: torch.Tensor) -> torch.Tensor:
        w = train[i]
        return F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())

    _fit(model, loss, len(train), steps, on_step, lr=lr, batch=batch)
    with torch.no_grad():
        nats = [
            F.cross_entropy(model(t[None, :-1])[0], t[1:], reduction="sum")
            for t in (torch.tensor([model.vocab.index(c) for c in b]) for b in held_out)
        ]
    return {"test_bits_per_char": float(sum(nats) / sum(len(b) - 1 for b in held_out) / np.log(2))}


def reversal_batch(seqs: list[np.ndarray], bos: int, eos: int) -> tuple[torch.Tensor, ...]:
    """(src, src_lengths, tgt_in, tgt_out) for the reversal task; tgt_out is -100 at padding."""
    n, s = len(seqs), max(len(q) for q in seqs)
    src = np.zeros((n, s), np.int64)
    tgt_in = np.full((n, s + 1), eos, np.int64)
    tgt_out = np.full((n, s + 1), -100, np.int64)
    for i, q in enumerate(seqs):
        src[i, : len(q)] = q
        tgt_in[i, 0], tgt_in[i, 1 : len(q) + 1] = bos, q[::-1]
        tgt_out[i, : len(q)], tgt_out[i, len(q)] = q[::-1], eos
    lengths = np.array([len(q) for q in seqs], np.int64)
    return tuple(torch.from_numpy(a) for a in (src, lengths, tgt_in, tgt_out))


def train_seq2seq(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """Teacher-forced cross-entropy on reversing digit strings (length 1-12); returns test token accuracy."""
    src, lengths, tgt_in, tgt_out = reversal_batch(digit_strings(20000, seed=0), model.bos, model.eos)

    def loss(i: torch.Tensor) -> torch.Tensor:
        logits = model(src[i], lengths[i], tgt_in[i])
        return F.cross_entropy(logits.flatten(0, 1), tgt_out[i].flatten(), ignore_index=-100)

    _fit(model, loss, len(src), steps, on_step, lr=3e-3)
    t_src, t_len, t_in, t_out = reversal_batch(digit_strings(500, seed=1), model.bos, model.eos)
    with torch.no_grad():
        pred = model(t_src, t_len, t_in).argmax(-1)
    valid = t_out != -100
    return {"test_token_accuracy": float((pred[valid] == t_out[valid]).float().mean())}


def train_vrnn(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """Maximise the ELBO on noisy 2-D orbits; returns the test negative ELBO per step (nats)."""
    x = torch.from_numpy(trajectories(4096, model.steps, seed=0))
    _fit(model, lambda i: model(x[i]).mean() / x.shape[1], len(x), steps, on_step)
    torch.manual_seed(1)
    with torch.no_grad():
        test = torch.from_numpy(trajectories(512, model.steps, seed=1))
        return {"test_neg_elbo_per_step": float(model(test).mean() / test.shape[1])}


def train_gpt(model: nn.Module, steps: int, on_step: OnStep) -> dict[str, float]:
    """Next-character cross-entropy for a causal transformer on python_text(); same split as train_char_lm."""
    return train_char_lm(model, steps, on_step, window=128, lr=2e-3, batch=32)
