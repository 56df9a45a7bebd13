"""The `hf:DIR` route for encoder-decoders (BART, T5, Marian and other models transformers loads with
AutoModelForSeq2SeqLM), exported as family `hf-seq2seq`: the transformer-seq2seq graphs, `encoder` (source ->
every decoder layer's cross-attention keys and values, computed once) and `decoder_with_past` (tokens against the
self-attention cache), run by loop kind `seq2seq_generate` with the folder's generation settings
(runtimes/seq2seq_generate.py), so `deploykit sample BUNDLE --prompt "..." [--beam N]` decodes as transformers'
`generate` does. The model's own attention code fills its EncoderDecoderCache inside the graphs; the cache layout
(layers, heads, head size) is read from what the model returns, not from config keys.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..runtimes.seq2seq_generate import NEVER, GenerateConfig
from .registry import Family, Tolerance, attribute, register
from .transformer import ENCDEC_PROTOCOL, encdec_config, encdec_roles, encdec_shapes

PROTOCOL = ENCDEC_PROTOCOL + " And `generation`: the GenerateConfig fields of the folder's generation settings."
DEFAULT_MAX_LENGTH = 20  # transformers' default new tokens when the folder sets neither max_length nor max_new_tokens
# encoder-decoders transformers loads as Seq2SeqLM that these graphs do not carry (tried on tiny configs)
REFUSED_TYPES = {
    "led": "its encoder's Longformer windows are data-dependent shapes torch.export cannot trace",
    "prophetnet": "its decoder predicts n-gram streams, not one next token",
    "xlm-prophetnet": "its decoder predicts n-gram streams, not one next token",
    "switch_transformers": "its mixture-of-experts forward needs the encoder's router logits at every step",
}
# generation settings the search does not run, with the value that means "off"
UNSUPPORTED = {"sequence_bias": None, "encoder_repetition_penalty": 1.0, "exponential_decay_length_penalty": None, "guidance_scale": None, "force_words_ids": None,
               "constraints": None, "renormalize_logits": False, "num_beam_groups": 1, "diversity_penalty": 0.0,
               "penalty_alpha": None, "watermarking_config": None, "remove_invalid_values": False}


def _caches() -> tuple[Any, Any]:
    from transformers import DynamicCache, EncoderDecoderCache

    return DynamicCache, EncoderDecoderCache


def _encoded(memory: torch.Tensor) -> Any:
    """The encoder's output as the model's forward takes it."""
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=memory)


def _pairs(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class HFSeq2Seq(nn.Module):
    """A transformers encoder-decoder behind the transformer-seq2seq protocol."""

    def __init__(self, model: nn.Module, vocab: list[str], folder: str) -> None:
        super().__init__()
        self.model, self.src_vocab, self.tgt_vocab = model, vocab, vocab
        self.generation = generation_fields(model, folder)
        self.bos, self.eos = self.generation.pop("bos"), self.generation["stops"][0]
        self.max_target_length = self.generation["max_length"] - 1
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it
        with torch.no_grad():  # the cache layout, as the model fills it
            src = torch.zeros(1, 2, dtype=torch.long)
            memory = self.encode(src, torch.ones_like(src))
            self.width = int(memory.shape[-1])  # the encoder's output size (d_model, hidden_size: names differ)
            cross = self.cross_kv(memory)
            empty = [(k[:, :, :0], v[:, :, :0]) for k, v in cross]
            _, presents = self.decode_cached(src[:, :1], src[:, :1], torch.ones_like(src), empty, cross)
        layouts = {(k.shape[1], k.shape[3]) for k, _ in cross + presents}
        if len(layouts) != 1 or len(presents) != len(cross):
            raise InputError(f"hf:{folder}: {type(model).__name__}'s caches have {len(presents)} self-attention and "
                             f"{len(cross)} cross-attention layers of (heads, head size) {sorted(layouts)}; deploykit's "
                             "encoder-decoder graphs need one layout for both.")
        (self.heads, self.head_dim), self.layers = layouts.pop(), len(cross)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden state [B, S, D]."""
        return self.model.get_encoder()(input_ids=src, attention_mask=src_mask, return_dict=True)[0]  # some: a tuple

    def cross_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention (key, value), as the model's own attention projects them (one
        decoder step fills its cross cache; the rest of that step, the logits included, is dead code in the
        graph)."""
        dynamic, encoder_decoder = _caches()
        cache = encoder_decoder(dynamic(), dynamic())
        start = torch.zeros(memory.shape[0], 1, dtype=torch.long, device=memory.device)
        self.model(encoder_outputs=_encoded(memory), decoder_input_ids=start, use_cache=True, return_dict=True,
                   **{self._cache_arg: cache})
        return _pairs(cache.cross_attention_cache)

    def decode_cached(self, tokens: torch.Tensor, position_ids: torch.Tensor, src_mask: torch.Tensor,
                      past: list[tuple[torch.Tensor, torch.Tensor]], cross: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits [B, T, vocab] and the self-attention presents. Positions follow the cache's length, as in
        transformers (rows decode in step); `position_ids` is the loop's count of the same."""
        dynamic, encoder_decoder = _caches()
        own, other = dynamic(), dynamic()
        for layer, (key, value) in enumerate(past):
            own.update(key, value, layer)
        for layer, (key, value) in enumerate(cross):
            other.update(key, value, layer)
        cache = encoder_decoder(own, other)
        cache.is_updated = dict.fromkeys(range(len(cross)), True)  # the cross keys/values are there: reuse them
        batch, length = src_mask.shape
        memory = cross[0][0].new_zeros(()).expand(batch, length, self.width)  # its shape only: the cross cache is full
        out = self.model(encoder_outputs=_encoded(memory), attention_mask=src_mask, decoder_input_ids=tokens, use_cache=True,
                         return_dict=True, **{self._cache_arg: cache})
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits, _pairs(cache.self_attention_cache)


def _ids(value: Any) -> list[int]:
    return [] if value is None else [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def generation_fields(model: nn.Module, folder: str) -> dict[str, Any]:
    """The GenerateConfig fields (and `bos`, the decoder start) of the model's generation_config as transformers'
    `generate()` resolves them without arguments; InputError naming a setting the search does not run."""
    gen, config = model.generation_config, model.config
    for name, off in UNSUPPORTED.items():
        value = getattr(gen, name, None)
        if value is not None and value != off:
            raise InputError(f"hf:{folder}: generation_config sets {name}={value!r}, which deploykit's search does not "
                             "run; remove it from generation_config.json (or set it to its default) to export.")
    starts = _ids(gen.decoder_start_token_id if gen.decoder_start_token_id is not None else gen.bos_token_id)
    stops = _ids(gen.eos_token_id)
    if len(starts) != 1 or not stops:
        raise InputError(f"hf:{folder}: generation_config has decoder_start_token_id / bos_token_id {starts or None} "
                         f"and eos_token_id {stops or None}; an encoder-decoder needs one start token and an eos.")
    positions = int(getattr(config, "max_position_embeddings", None) or 0)  # 0: relative positions (T5), no limit
    if gen.max_new_tokens is not None:
        max_length = int(gen.max_new_tokens) + 1
    elif gen.max_length is None:
        max_length = min(DEFAULT_MAX_LENGTH + 1, positions or DEFAULT_MAX_LENGTH + 1)
    else:
        max_length = int(gen.max_length)
    if positions and max_length > positions:
        raise InputError(f"hf:{folder}: generation max_length {max_length} is longer than the {positions} positions "
                         f"{type(model).__name__} learned; lower max_length in generation_config.json.")
    bad = [ids for ids in (gen.bad_words_ids or []) if list(ids) not in [[s] for s in stops]]
    if any(len(ids) != 1 for ids in bad):
        raise InputError(f"hf:{folder}: generation_config's bad_words_ids holds sequences of several tokens "
                         f"({[list(b) for b in bad if len(b) != 1][:3]}); deploykit bans single tokens only.")
    early = gen.early_stopping if gen.early_stopping is not None else False
    if early not in (True, False, NEVER):
        raise InputError(f"hf:{folder}: generation_config early_stopping is {early!r}, expected true, false or "
                         f"'{NEVER}'.")
    forced_bos = gen.forced_bos_token_id
    return {
        "bos": starts[0], "stops": stops, "max_length": max_length,
        "pad": int(gen.pad_token_id) if gen.pad_token_id is not None else stops[0],
        "min_length": int(gen.min_new_tokens) + 1 if gen.min_new_tokens else int(gen.min_length or 0),
        "num_beams": int(gen.num_beams or 1), "early_stopping": early,
        "length_penalty": float(gen.length_penalty if gen.length_penalty is not None else 1.0),
        "no_repeat_ngram_size": int(gen.no_repeat_ngram_size or 0),
        "encoder_no_repeat_ngram_size": int(gen.encoder_no_repeat_ngram_size or 0),
        "repetition_penalty": float(gen.repetition_penalty if gen.repetition_penalty is not None else 1.0),
        "bad_words": [int(ids[0]) for ids in bad] or None,
        "forced_bos": None if forced_bos is None else int(forced_bos),
        "forced_eos": _ids(gen.forced_eos_token_id) or None,
        "suppress": _ids(gen.suppress_tokens) or None, "begin_suppress": _ids(gen.begin_suppress_tokens) or None,
        "begin_index": 1 if forced_bos is None else 2,
    }


def _loop(model: nn.Module) -> GenerateConfig:
    return GenerateConfig(**encdec_config(model), **attribute(model, "generation", "hf-seq2seq", PROTOCOL))


# fp32 logits: as transformer-seq2seq (LayerNorm / RMSNorm, softmax, GELU recomputed by ORT); tokens compare exactly.
register(Family("hf-seq2seq", "transformers encoder-decoder (BART, T5, Marian): encoder with cross keys/values once + "
                "decoder with past, searched as generate() does", PROTOCOL, encdec_roles, encdec_shapes,
                Tolerance(1e-4, 1e-4), ("seq2seq_generate",), _loop))
