"""`hf:DIR`: a model saved with transformers' `save_pretrained`, routed by its architecture: a causal language model
goes through the `gpt` family's KV-cache loop as it is published (its default attention, sdpa included); an
encoder-decoder through `hf-seq2seq` (hf_seq2seq.py); a text encoder (masked LM, sequence classifier, bare encoder)
through `hf-encoder` (hf_encoder.py); an image classifier through `cnn` (hf_image.py).

The folder is read as it is (config.json, weights, tokenizer.json when present); nothing is fetched.
GPT-2 and Llama-style models (RoPE, RMSNorm, grouped-query attention, SwiGLU) are covered by the
tests; any AutoModelForCausalLM whose cache is a transformers DynamicCache goes the same way.
transformers is needed only here (`pip install deploykit[hf]`); the bundle runs without it.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, optional_import
from ..runtimes.tokens import read_tokenizer
from . import hf_encoder, hf_image
from .hf_seq2seq import REFUSED_TYPES, HFSeq2Seq
from .onnx_export import first_line

WEIGHTS = ("*.safetensors", "*.bin")


def transformers_module() -> Any:
    """transformers, quiet (no load reports, no progress bars); BackendUnavailableError naming the extra without it."""
    transformers = optional_import("transformers", "hf:DIR and the text encoders of diffusers:DIR pipelines need "
                                                   "transformers: `pip install deploykit[hf]`.")
    transformers.logging.set_verbosity_error()  # load reports and deprecation notes stay out of the terminal
    transformers.utils.logging.disable_progress_bar()
    return transformers


class HFCausalLM(nn.Module):
    """A transformers causal LM behind the gpt protocol: forward_cached over per-layer (key, value) tensors
    [batch, kv_heads, past, head_dim], rebuilt into the model's DynamicCache inside the graph."""

    def __init__(self, model: nn.Module, vocab: list[str], context: int | None = None) -> None:
        super().__init__()
        config = model.config
        self.model, self.vocab = model, vocab
        learned = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0)
        if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 2):
            raise InputError(f"--context is {context!r}, expected a number of positions >= 2.")
        if learned and context is not None and context > learned:
            raise InputError(f"--context {context} is longer than the {learned} positions {type(model).__name__} "
                             "learned; give at most that.")
        self.context = context or learned
        if not self.context:  # ALiBi (Bloom, MPT) and other position schemes without a table
            raise InputError(f"{type(model).__name__}'s config has no max_position_embeddings / n_positions (its "
                             "positions have no learned limit); choose the bundle's context with --context N.")
        self.layers = int(config.num_hidden_layers)
        self.heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        eos = getattr(config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        if isinstance(eos, int) and 0 <= eos < len(vocab):
            self.eos_token_id = eos
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it

    def forward_cached(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                       past: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits [B, T, vocab] and the presents (past + new) per layer."""
        from transformers import DynamicCache

        cache = DynamicCache()  # full layers: sliding-window attention is the model's mask over them (the
        # config's sliding layers would keep only the last window, which torch.export turns into a bound on past)
        for layer, (key, value) in enumerate(past):
            cache.update(key, value, layer)
        out = self.model(input_ids=tokens, position_ids=position_ids, attention_mask=attention_mask, use_cache=True,
                         **{self._cache_arg: cache})
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        if hasattr(cache, "layers"):
            presents = [(layer.keys, layer.values) for layer in cache.layers]
        else:  # transformers 4.x
            presents = list(zip(cache.key_cache, cache.value_cache))
        return out.logits, presents

    def forward_in_place(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                         cache: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits [B, T, vocab] and the buffers [B, heads, C, head_dim] with the new keys/values written at
        P .. P + T - 1 (P + T: the mask's width; the gpt-inplace family's protocol)."""
        from .kv_in_place import transformers_cache

        start = attention_mask.shape[1] - tokens.shape[1]
        mask = nn.functional.pad(attention_mask, (0, cache[0][0].shape[2] - attention_mask.shape[1]))  # over C
        layers = transformers_cache(cache, start)
        out = self.model(input_ids=tokens, position_ids=position_ids, attention_mask=mask, use_cache=True,
                         **{self._cache_arg: layers})
        return out.logits, [(layer.keys, layer.values) for layer in layers.layers]


@dataclass(frozen=True)
class HFSource:
    """What hf:DIR gives the exporter: the wrapped model, its tokenizer.json if any, a fingerprint of the folder and
    the family it exports as (gpt for causal LMs, hf-seq2seq for encoder-decoders, hf-encoder for text encoders, cnn
    for image classifiers) and the others it can export as (gpt-inplace for causal LMs)."""

    model: nn.Module
    tokenizer: Path | None
    fingerprint: str
    family: str
    also: tuple[str, ...] = ()  # other families the same model exports as (--family)


def fingerprint(folder: Path) -> str:
    """sha256 over config.json and the weight files' names and sizes (cheap at any model size)."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for pattern in WEIGHTS:
        for path in sorted(folder.glob(pattern)):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()


IMAGE_CLASSIFIER = "ForImageClassification"
SEQ2SEQ = "Seq2SeqLM"  # the route of encoder-decoders (AutoModelForSeq2SeqLM)
AUTO = {IMAGE_CLASSIFIER: "AutoModelForImageClassification"}  # the text encoders' are in hf_encoder.HEADS


def _route(folder: str | Path, transformers: Any, root: Path) -> tuple[Any, str | None, Any]:
    """The folder's config, its route (None for a decoder-only causal LM, SEQ2SEQ for an encoder-decoder,
    IMAGE_CLASSIFIER for an image classifier, else the hf_encoder.HEADS suffix of a text encoder) and the transformers
    Auto class that loads it; InputError for architectures no route takes."""
    try:
        config = transformers.AutoConfig.from_pretrained(root, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (transformers raises ValueError, OSError, KeyError, its own types)
        raise InputError(f"hf:{folder}: config.json could not be read by transformers ({first_line(exc)}).") from exc
    kind = getattr(config, "model_type", "?")
    architectures = list(getattr(config, "architectures", None) or [])
    takes = ("hf:DIR exports decoder-only causal LMs (GPT-2, Llama, Qwen, Phi-3, GPT-NeoX, OPT, Gemma, GPT-J, "
             "StableLM and other *ForCausalLM models), text-to-text encoder-decoders (BART, T5, Marian and other "
             "*ForConditionalGeneration / *MTModel models), text encoders (BERT, RoBERTa, DistilBERT and other "
             "*ForMaskedLM, *ForSequenceClassification or bare *Model encoders) and image classifiers (ViT, "
             "ConvNeXt, ResNet and other *ForImageClassification models)")
    if getattr(config, "is_encoder_decoder", False):
        if type(config) not in transformers.AutoModelForSeq2SeqLM._model_mapping:  # e.g. Whisper: audio in
            raise InputError(f"hf:{folder}: model type '{kind}' ({', '.join(architectures) or 'no architectures'}) is "
                             f"an encoder-decoder without a text-to-text class in transformers; {takes}.")
        if kind in REFUSED_TYPES:
            raise InputError(f"hf:{folder}: model type '{kind}' is an encoder-decoder deploykit does not export: "
                             f"{REFUSED_TYPES[kind]}; {takes}.")
        return config, SEQ2SEQ, transformers.AutoModelForSeq2SeqLM
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or (
            not architectures and type(config) in transformers.AutoModelForCausalLM._model_mapping):
        if type(config) not in transformers.AutoModelForCausalLM._model_mapping:
            raise InputError(f"hf:{folder}: model type '{kind}' has no causal-LM class in transformers "
                             f"{transformers.__version__}; {takes}.")
        return config, None, transformers.AutoModelForCausalLM
    suffix = IMAGE_CLASSIFIER if any(a.endswith(IMAGE_CLASSIFIER) for a in architectures) else hf_encoder.head(architectures)
    auto = None if suffix is None else getattr(transformers, AUTO.get(suffix) or hf_encoder.HEADS[suffix][1])
    if auto is None or type(config) not in auto._model_mapping:  # e.g. audio classifiers, CLIP-style dual encoders
        raise InputError(f"hf:{folder}: model type '{kind}' ({', '.join(architectures) or 'no architectures'}) is "
                         f"not supported yet; {takes}.")
    return config, suffix, auto


def _from_pretrained(auto: Any, folder: str | Path, root: Path, transformers: Any) -> nn.Module:
    """`auto`.from_pretrained(root) in float32; InputError naming what disagrees when it fails or when a tensor
    would be dropped or randomly filled (missing, unexpected or mismatched keys)."""
    try:
        model, info = auto.from_pretrained(root, local_files_only=True, dtype=torch.float32, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001  (config validation, safetensors and torch errors of every kind)
        config = transformers.AutoConfig.from_pretrained(root, local_files_only=True)
        try:
            shapes = _shape_mismatches(root, config, auto)
        except Exception:  # noqa: BLE001  (an unreadable weight file: the original error says it)
            shapes = []
        why = f"weights and config.json disagree ({'; '.join(shapes[:4])})" if shapes else first_line(exc)
        raise InputError(f"hf:{folder}: transformers could not load it ({auto.__name__}): {why}. Give the folder "
                         "save_pretrained wrote (config.json, model.safetensors, tokenizer.json).") from exc
    wrong = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(wrong.values()):  # a silently re-initialized tensor would make a bundle of another model
        found = "; ".join(f"{k.split('_')[0]} {len(v)}: {', '.join(map(str, v[:4]))}{', ...' if len(v) > 4 else ''}"
                          for k, v in wrong.items() if v)
        raise InputError(f"hf:{folder}: the weights do not fit {type(model).__name__} ({found}); transformers would "
                         "drop or randomly fill them. Give the folder save_pretrained wrote for this model.")
    return model


def _shape_mismatches(root: Path, config: Any, auto: Any) -> list[str]:
    """'name: file [shape] vs config [shape]' for each tensor of the folder's safetensors whose shape is not the one
    the config builds (the model is built on the meta device: no memory)."""
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in auto.from_config(config).state_dict().items()}
    found = []
    for path in sorted(root.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
                shape = tuple(handle.get_slice(name).get_shape())
                if name in expected and expected[name] != shape:
                    found.append(f"{name}: file {list(shape)} vs config {list(expected[name])}")
    return found


def load(folder: str | Path, context: int | None = None) -> HFSource:
    """The model saved in `folder` (float32, eval) on its route: a causal LM wrapped for the gpt family with `context`
    positions (default: the config's max_position_embeddings), an encoder-decoder for hf-seq2seq, a text encoder for
    hf-encoder or an image classifier for cnn; InputError naming what is missing, malformed or not supported."""
    root = Path(folder)
    if not (root / "config.json").is_file():
        raise InputError(f"hf:{folder}: no config.json there; give a folder written by save_pretrained "
                         "(config.json, model.safetensors, tokenizer.json).")
    if not any(any(root.glob(p)) for p in WEIGHTS):
        raise InputError(f"hf:{folder}: no weights (*.safetensors or *.bin) beside config.json; nothing is downloaded.")
    if not any(root.glob("*.safetensors")):
        raise InputError(f"hf:{folder}: the weights are pickled (*.bin), which deploykit does not load: a pickle can "
                         "carry code. Convert them to safetensors where you trust the file: "
                         "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`.")
    transformers = transformers_module()
    config, suffix, auto = _route(folder, transformers, root)
    tokenizer = root / "tokenizer.json" if (root / "tokenizer.json").is_file() else None
    tok = None if tokenizer is None else read_tokenizer(tokenizer, f"hf:{folder}: the folder's tokenizer")
    if suffix is not None and context is not None:
        raise InputError("--context sets a causal LM's positions; drop it for this folder (model type "
                         f"'{config.model_type}').")
    model = _from_pretrained(auto, folder, root, transformers)
    if suffix == IMAGE_CLASSIFIER:
        return HFSource(hf_image.wrap(model, root), None, fingerprint(root), "cnn")
    if suffix not in (None, SEQ2SEQ):  # a text encoder
        encoder = hf_encoder.wrap(model, hf_encoder.HEADS[suffix][0], tok, root, config.model_type)
        return HFSource(encoder, tokenizer, fingerprint(root), "hf-encoder")
    size = int(model.config.vocab_size)
    names: list[str] = []
    if tok is not None:
        names = [tok.id_to_token(i) or "" for i in range(min(size, tok.get_vocab_size(with_added_tokens=True)))]
    vocab = names + [f"<{i}>" for i in range(len(names), size)]  # ids the tokenizer never produces (padded rows)
    if suffix == SEQ2SEQ:
        return HFSource(HFSeq2Seq(model.eval(), vocab, str(folder)), tokenizer, fingerprint(root), "hf-seq2seq")
    return HFSource(HFCausalLM(model.eval(), vocab, context), tokenizer, fingerprint(root), "gpt", ("gpt-inplace",))
