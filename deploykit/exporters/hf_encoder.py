"""The `hf:DIR` route for text encoders (BERT, RoBERTa, DistilBERT, ... saved with save_pretrained): masked-LM,
sequence-classification and bare (feature-extraction) models, exported as family `hf-encoder`: one graph over
input_ids and a right-padded attention_mask (plus token_type_ids where the model takes them), batch and sequence
length dynamic up to the position table. The bundle reads text through the folder's tokenizer.json
(`deploykit run BUNDLE --text ...`, runtimes/encoder.py); transformers is needed only at export.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..runtimes.encoder import TASKS, TextEncoderConfig
from ..specs import DimRule, TensorSpec
from .onnx_export import first_line
from .registry import Family, Role, Tolerance, attribute, register

# architecture suffix -> (task, the transformers Auto class that loads it)
HEADS = {"ForMaskedLM": ("fill-mask", "AutoModelForMaskedLM"),
         "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
         "Model": ("feature-extraction", "AutoModel")}
PROTOCOL = ("`task` (fill-mask, text-classification, feature-extraction), `vocab_size`, `context`, `type_vocab` "
            "(0 without token_type_ids), `pad_id`, `labels`, `mask_token`; forward(input_ids, attention_mask"
            "[, token_type_ids]) -> logits or last_hidden_state.")


def head(architectures: list[str]) -> str | None:
    """The HEADS suffix of the first architecture that has one."""
    return next((suffix for a in architectures for suffix in HEADS if a.endswith(suffix)), None)


class HFTextEncoder(nn.Module):
    """A transformers encoder behind the hf-encoder protocol: forward(input_ids, attention_mask) -> its task's
    output."""

    def __init__(self, model: nn.Module, task: str, tokenizer: Any, folder: Path) -> None:
        super().__init__()
        config = model.config
        self.model, self.task = model, task
        self.vocab_size = int(config.vocab_size)
        embeddings = getattr(model.base_model, "embeddings", None)
        offset = int(getattr(embeddings, "padding_idx", -1) or 0) + 1 if hasattr(embeddings, "padding_idx") else 0
        self.context = int(config.max_position_embeddings) - offset  # RoBERTa numbers positions after padding_idx
        self.type_vocab = _type_vocab(model)
        self.pad_id = int(config.pad_token_id if getattr(config, "pad_token_id", None) is not None else 0)
        self.labels = [str(config.id2label[i]) for i in sorted(config.id2label)] if task == "text-classification" else []
        self.mask_token = _mask_token(folder, tokenizer) if task == "fill-mask" else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._output(self.model(input_ids=input_ids, attention_mask=attention_mask))

    def _output(self, out: Any) -> torch.Tensor:
        return out.logits if self.task != "feature-extraction" else out.last_hidden_state


class HFTextEncoderWithTypes(HFTextEncoder):
    """The same for models that also take token_type_ids (BERT's segment ids; single texts are segment 0)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self._output(self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids))


def _type_vocab(model: nn.Module) -> int:
    """How many token types (segments) the model takes as token_type_ids; 0 when it takes none."""
    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        return 0
    return int(getattr(model.config, "type_vocab_size", 0) or 0)


def _mask_token(folder: Path, tokenizer: Any) -> str | None:
    """The mask token save_pretrained recorded (tokenizer_config.json), else the tokenizer's [MASK] / <mask>."""
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            token = json.loads(config.read_text()).get("mask_token")
        except (ValueError, OSError):
            token = None
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str):
            return token
    if tokenizer is None:
        return None
    return next((t for t in ("[MASK]", "<mask>") if tokenizer.token_to_id(t) is not None), None)


def wrap(model: nn.Module, task: str, tokenizer: Any, folder: Path, kind: str) -> HFTextEncoder:
    """The loaded transformers model as an hf-encoder module; InputError unless it reads token ids alone."""
    refuse = f"hf:{folder}: model type '{kind}' ({type(model).__name__})"
    config = model.config
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        raise InputError(f"{refuse} reads '{model.main_input_name}', not text; it is not supported yet.")
    if not all(isinstance(getattr(config, k, None), int) for k in ("vocab_size", "max_position_embeddings")):
        raise InputError(f"{refuse} has no vocab_size / max_position_embeddings in its config: not a text encoder "
                         "deploykit reads (multi-modal and other models are not supported yet).")
    cls = HFTextEncoderWithTypes if _type_vocab(model) else HFTextEncoder
    encoder = cls(model.eval(), task, tokenizer, folder)
    ids = torch.zeros(1, 2, dtype=torch.long)
    try:  # a model that needs more than token ids (pixels, a decoder input) fails here, not inside torch.export
        with torch.no_grad():
            encoder(ids, torch.ones_like(ids), *([torch.zeros_like(ids)] if encoder.type_vocab else []))
    except Exception as exc:  # noqa: BLE001  (transformers raises ValueError, TypeError, AttributeError, ...)
        raise InputError(f"{refuse} does not run on token ids and an attention mask alone ({first_line(exc)}); it "
                         "is not supported yet.") from exc
    return encoder


def _roles(model: nn.Module) -> dict[str, Role]:
    vocab, context = attribute(model, "vocab_size", "hf-encoder", PROTOCOL), attribute(model, "context", "hf-encoder", PROTOCOL)
    inputs = [TensorSpec("input_ids", "int64", ("batch", "seq"), high=vocab),
              TensorSpec("attention_mask", "int64", ("batch", "seq"), high=2, padding="seq", pad_right=True)]
    if model.type_vocab:
        inputs.append(TensorSpec("token_type_ids", "int64", ("batch", "seq"), high=model.type_vocab))
    return {"model": Role(model, tuple(inputs), (TASKS[model.task],), {"batch": 2, "seq": min(8, context)},
                          {"seq": DimRule(min=1, max=context)})}


def _shapes(model: nn.Module) -> list[dict[str, int]]:
    """Batch 1 at 8 tokens, batch 3 at 17 (right-padded rows), and one row at the full position table."""
    context = int(model.context)
    return [{"batch": 1, "seq": min(8, context)}, {"batch": 3, "seq": min(17, context)}, {"batch": 1, "seq": context}]


def _loop(model: nn.Module) -> TextEncoderConfig:
    return TextEncoderConfig(task=model.task, vocab_size=model.vocab_size, context=model.context, pad_id=model.pad_id,
                             labels=model.labels, mask_token=model.mask_token)


# Tolerance: fp32 transformer stacks, as the gpt family (LayerNorm'd activations ~1, logits ~10).
register(Family("hf-encoder", "Hugging Face text encoder (BERT-style): fill-mask, classification, features", PROTOCOL,
                _roles, _shapes, Tolerance(1e-4, 1e-4), ("text-encoder",), _loop))
