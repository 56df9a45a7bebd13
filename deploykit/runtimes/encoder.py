"""Text encoders (an hf:DIR BERT, RoBERTa, DistilBERT, ...): one graph over a right-padded batch of token ids and its
attention mask, read as masked-token predictions (fill-mask), class probabilities (text-classification) or
per-token features (feature-extraction). Text goes through the bundle's tokenizer.json with its special tokens
([CLS] ... [SEP]), as transformers' pipelines encode it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .kinds import LoopConfig, LoopKind, Runners, register

TASKS = {"fill-mask": "logits", "text-classification": "logits", "feature-extraction": "last_hidden_state"}
TOP = 5  # fill-mask: candidates shown per masked position


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig(LoopConfig):
    """The task (TASKS), vocabulary size, longest input in tokens, the id padding fills rows with, the class
    names of a classifier and the mask token of a masked LM."""

    kind = "text-encoder"
    task: str
    vocab_size: int
    context: int
    pad_id: int
    labels: list[str] = field(default_factory=list)
    mask_token: str | None = None


@dataclass(frozen=True)
class TextResult:
    """One text's outputs (its own tokens, padding cut) and what they say, as the CLI prints it."""

    text: str
    outputs: dict[str, np.ndarray]
    summary: str


def feeds(codec: Any, config: TextEncoderConfig, texts: list[str], inputs: list[str]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The graph's feeds for `texts` (right-padded with pad_id, mask 1 on real tokens, token types 0) and each text's
    ids; InputError for a text longer than the context or empty after encoding."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("texts: give a list of at least one text (str).")
    ids = [codec.encode(text, "text", special=True) for text in texts]
    for text, row in zip(texts, ids):
        if not 0 < row.size <= config.context:
            raise InputError(f"text {text[:60]!r} encodes to {row.size} tokens; this encoder takes 1 to "
                             f"{config.context} (its position table); split the text.")
    width = max(row.size for row in ids)
    batch = np.full((len(ids), width), config.pad_id, np.int64)
    mask = np.zeros((len(ids), width), np.int64)
    for i, row in enumerate(ids):
        batch[i, :row.size], mask[i, :row.size] = row, 1
    given = {"input_ids": batch, "attention_mask": mask, "token_type_ids": np.zeros_like(batch)}
    return {name: given[name] for name in inputs}, ids


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _summary(codec: Any, config: TextEncoderConfig, row: np.ndarray, out: np.ndarray, text: str) -> str:
    if config.task == "text-classification":
        p = _softmax(out)
        order = np.argsort(-p)[:TOP]
        return ", ".join(f"{config.labels[k] if k < len(config.labels) else k} {p[k]:.3f}" for k in order)
    if config.task == "feature-extraction":
        return f"{out.shape[0]} tokens x {out.shape[1]} features"
    mask_id = codec.tokenizer.token_to_id(config.mask_token) if config.mask_token else None
    where = np.flatnonzero(row == mask_id) if mask_id is not None else np.zeros(0, int)
    if not where.size:
        raise InputError(f"text {text[:60]!r} has no {config.mask_token or 'mask token'}; a fill-mask model predicts "
                         f"the tokens written as {config.mask_token or 'its mask token'}.")
    lines = []
    for n, position in enumerate(where, 1):  # one line of candidates per masked position
        p = _softmax(out[position])
        words = [(codec.decode(np.asarray([k])).strip() or codec.tokenizer.id_to_token(int(k)), p[k])
                 for k in np.argsort(-p)[:TOP]]
        lines.append(f"{config.mask_token} {n}: " + " | ".join(f"{w!r} {q:.3f}" for w, q in words))
    return "\n".join(lines)


def run_texts(runners: Runners, config: TextEncoderConfig, codec: Any, texts: list[str]) -> list[TextResult]:
    """Each text's outputs and summary from one graph call over the batch."""
    runner = runners["model"]
    batch, ids = feeds(codec, config, texts, runner.spec.input_names())
    outputs = runner.infer(batch)
    results = []
    for i, (text, row) in enumerate(zip(texts, ids)):
        mine = {name: value[i, :row.size] if value.ndim > 2 else value[i] for name, value in outputs.items()}
        results.append(TextResult(text, mine, _summary(codec, config, row, mine[TASKS[config.task]], text)))
    return results


register(LoopKind(TextEncoderConfig, "text encoder", "graphs", text=run_texts,
                  hint="Give it text with `deploykit run BUNDLE --text \"...\"` (Python: Deployment.read_texts)."))
