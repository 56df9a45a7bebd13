"""Token generation shared by every token model (recurrent LMs, seq2seq decoders, transformers).

The model side is a small protocol (start / step / select); sampling is numpy with uniforms drawn
from a seeded PCG64 stream, one per row and step, so the same loop over torch and over
onnxruntime picks the same tokens from the same seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..backends.base import Runner
from ..checks import check_fits, check_int
from ..errors import InputError, choices, optional_import
from ..parity import Tolerance
from .kinds import LoopConfig, Runners, kind_of


class TokenModel(Protocol):
    """What the generation loops need from a model."""

    vocab_size: int

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Consume one prompt (or source) per row; return next-token logits [rows, vocab]."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row [rows] int64; return next-token logits [rows, vocab]."""

    def select(self, rows: np.ndarray) -> None:
        """Keep (and reorder or repeat) the given rows of the model's state, for beam search."""


MIN_TEMPERATURE = 1e-30  # logits up to ~1e8 stay finite in float32 (3.4e38) once divided by it
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class SamplingConfig:
    """How each next token is picked. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 200
    stop: tuple[int, ...] = ()

    def check(self, vocab_size: int) -> None:
        """Raise InputError for values outside their ranges."""
        if not 0 <= self.temperature < np.inf:  # NaN included
            raise InputError(f"temperature is {self.temperature}, expected a finite value >= 0 (0 = greedy).")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / T overflows float32: every pick would be token 0
            raise InputError(f"temperature is {self.temperature}, below {MIN_TEMPERATURE:g}, where logits / "
                             "temperature overflows float32; use 0 for greedy decoding.")
        if self.temperature > FLOAT32_MAX:
            raise InputError(f"temperature is {self.temperature}, beyond float32's range ({FLOAT32_MAX:.3g}); "
                             "1 samples the model's own distribution.")
        if self.top_k is not None:
            check_int("top_k", self.top_k, 1, vocab_size, "the vocabulary size at most")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"top_p is {self.top_p}, expected 0 < top_p <= 1.")
        check_int("max_new_tokens", self.max_new_tokens, 1)
        bad = [t for t in self.stop if not 0 <= t < vocab_size]
        if bad:
            raise InputError(f"stop token id(s) {bad} are outside the vocabulary [0, {vocab_size - 1}].")


# The sampling modes that parity checks and benchmarks cover.
MODES: dict[str, SamplingConfig] = {
    "greedy": SamplingConfig(temperature=0.0),
    "temperature": SamplingConfig(temperature=0.8),
    "top-k": SamplingConfig(temperature=1.0, top_k=8),
    "top-p": SamplingConfig(temperature=1.0, top_p=0.9),
}


def pick_tokens(logits: np.ndarray, uniforms: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """Next token per row from logits [rows, vocab] and one uniform in [0, 1) per row."""
    if config.temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    x = logits.astype(np.float64) / config.temperature
    if config.top_k is not None:
        kth = np.partition(x, -config.top_k, axis=-1)[:, -config.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if config.top_p is not None:  # smallest set of most likely tokens whose mass reaches top_p (Holtzman et al. 2020)
        order = np.argsort(-p, axis=-1, kind="stable")
        rows = np.arange(len(p))[:, None]
        sorted_p = p[rows, order]
        drop = np.empty(p.shape, bool)
        drop[rows, order] = (np.cumsum(sorted_p, -1) - sorted_p) >= config.top_p
        p[drop] = 0.0
    cdf = np.cumsum(p, -1)
    index = (cdf < (uniforms * cdf[:, -1])[:, None]).sum(-1)
    return np.minimum(index, logits.shape[-1] - 1).astype(np.int64)


@runtime_checkable
class LoopInGraph(Protocol):
    """A TokenModel that can also run the whole sampling loop in one graph call."""

    loop_graph: Runner | None  # the runner of that graph; None on a backend without it (torch, TensorRT)

    def generate_in_graph(self, prompts: Sequence[np.ndarray], uniforms: np.ndarray, config: SamplingConfig
                          ) -> np.ndarray | None:
        """Tokens [rows, <= max_new_tokens] picked from uniforms [max_new_tokens, rows] (the loop may stop once every
        row has picked a stop token), or None when this call must run on the host (no loop graph, or the context
        would overflow: the host loop then says so)."""


def generate(model: TokenModel, prompts: Sequence[np.ndarray], config: SamplingConfig, seed: int = 0,
             host: bool = False) -> list[np.ndarray]:
    """New tokens for each prompt (stop token excluded), up to config.max_new_tokens each: in one graph call when the
    model has a loop graph (unless `host`), else one call per token; both pick from the same seeded uniforms."""
    config.check(model.vocab_size)
    rows = len(prompts)
    context = getattr(model, "context", None)  # a KV-cache or full-recompute model's positions
    if isinstance(context, int) and config.max_new_tokens > context:
        # no row can get past its context (the loop says so when one reaches it): buffers for more are never used,
        # and the uniforms for fewer steps are the same stream's first rows
        config = replace(config, max_new_tokens=context)
    check_fits(config.max_new_tokens * rows * 16, f"max_new_tokens {config.max_new_tokens} for {rows} prompt(s)",
               "ask for fewer tokens")  # the uniforms and the token buffer
    uniforms = np.random.default_rng(seed).random((config.max_new_tokens, rows))
    tokens = None if host or not isinstance(model, LoopInGraph) else model.generate_in_graph(prompts, uniforms, config)
    if tokens is None:
        tokens = _host_loop(model, prompts, uniforms, config)
    stop = np.asarray(config.stop, np.int64)
    hits = (tokens[:, :, None] == stop).any(-1)  # np.isin costs 4x as much on a handful of ids
    length = np.where(hits.any(1), hits.argmax(1), tokens.shape[1])
    return [tokens[i, : length[i]] for i in range(rows)]


def _host_loop(model: TokenModel, prompts: Sequence[np.ndarray], uniforms: np.ndarray, config: SamplingConfig
               ) -> np.ndarray:
    """Tokens [rows, <= max_new_tokens], one model call per token, stopping once every row has picked a stop token."""
    rows = len(prompts)
    out = np.zeros((rows, config.max_new_tokens), np.int64)
    done = np.zeros(rows, bool)
    stop = np.asarray(config.stop, np.int64)
    logits = model.start(prompts)
    for t in range(config.max_new_tokens):
        tokens = pick_tokens(logits, uniforms[t], config)
        out[:, t] = tokens
        done |= (tokens[:, None] == stop).any(1)
        if done.all() or t == config.max_new_tokens - 1:
            return out[:, : t + 1]
        logits = model.step(tokens)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def beam_search(model: TokenModel, prompt: np.ndarray, beams: int, max_new_tokens: int, eos: int) -> tuple[np.ndarray, float]:
    """Most likely continuation of one prompt (eos excluded) and its log-probability; no length penalty.

    Hypotheses ending in eos are set aside; search stops when the best finished score beats every
    live beam (scores only fall as beams grow), or at max_new_tokens.
    """
    if beams < 1:
        raise InputError(f"beam size is {beams}, expected at least 1.")
    SamplingConfig(max_new_tokens=max_new_tokens, stop=(eos,)).check(model.vocab_size)
    logits = model.start([prompt])
    model.select(np.zeros(beams, np.int64))
    logits = np.repeat(logits, beams, axis=0)
    scores = np.full(beams, -np.inf)
    scores[0] = 0.0  # all beams start identical: expand only the first
    seqs = np.zeros((beams, 0), np.int64)
    finished: list[tuple[float, np.ndarray]] = []
    for _ in range(max_new_tokens):
        cand = (scores[:, None] + log_softmax(logits)).ravel()
        order = np.argsort(-cand, kind="stable")[: 2 * beams]
        keep: list[int] = []
        for flat in order:
            beam, token = divmod(int(flat), model.vocab_size)
            if not np.isfinite(cand[flat]):
                break
            if token == eos:
                finished.append((float(cand[flat]), seqs[beam]))
            elif len(keep) < beams:
                keep.append(int(flat))
            if len(keep) == beams:
                break
        best_done = max((s for s, _ in finished), default=-np.inf)
        if not keep or best_done >= cand[keep[0]]:
            break
        index = np.asarray(keep)
        parents, tokens = index // model.vocab_size, index % model.vocab_size
        pad = beams - len(keep)  # fewer live candidates than beams: repeat the last one at -inf
        parents = np.concatenate([parents, np.repeat(parents[-1:], pad)])
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], pad)])
        scores = np.concatenate([cand[index], np.full(pad, -np.inf)])
        seqs = np.concatenate([seqs[parents], tokens[:, None]], axis=1)
        model.select(parents)
        logits = model.step(tokens)
    else:  # out of steps: live beams compete unterminated
        finished.extend((float(s), q) for s, q in zip(scores, seqs) if np.isfinite(s))
    score, seq = max(finished, key=lambda f: f[0])
    return seq, score


def encode_text(text: str, vocab: Sequence[str], what: str = "prompt") -> np.ndarray:
    """Token ids of a string over a character vocabulary; InputError naming the first unknown character."""
    index = {t: i for i, t in enumerate(vocab)}
    for pos, ch in enumerate(text):
        if ch not in index:
            shown = "".join(t for t in vocab if len(t) == 1)
            raise InputError(
                f"{what} {text!r} has character {ch!r} at position {pos}, which is not in the model's vocabulary "
                f"({len(vocab)} tokens: {shown!r}); remove or replace it."
            )
    return np.asarray([index[ch] for ch in text], np.int64)


def decode_tokens(ids: np.ndarray, vocab: Sequence[str]) -> str:
    """Text of token ids (multi-character special tokens such as '<eos>' are left out)."""
    return "".join(vocab[int(i)] for i in ids if len(vocab[int(i)]) == 1)


class Codec(Protocol):
    """Text <-> token ids for a language model."""

    textual: bool  # False: the bundle has no way to text (an hf:DIR folder exported without tokenizer.json)

    def encode(self, text: str, what: str = "prompt", special: bool = False) -> np.ndarray:
        """Token ids (int64) of `text`, with the tokenizer's special tokens (BOS) when `special`, as transformers
        encodes a prompt; InputError naming `what` when it cannot be encoded."""

    def decode(self, ids: np.ndarray) -> str:
        """Text of token ids."""


@dataclass(frozen=True)
class CharCodec:
    """A character vocabulary: one token per character (multi-character special tokens are never produced)."""

    vocab: Sequence[str]

    @property
    def textual(self) -> bool:
        """Whether any token is a character (a vocabulary of placeholders only has no text)."""
        return any(len(token) == 1 for token in self.vocab)

    def encode(self, text: str, what: str = "prompt", special: bool = False) -> np.ndarray:
        """Ids of the characters of `text` (a character vocabulary adds no special tokens)."""
        if not self.textual:
            raise InputError(f"this bundle carries no tokenizer.json, so {what} {text!r} cannot become token ids; give "
                             "token ids (--prompt-ids 1,2,3), or re-export from a folder with its tokenizer.json "
                             "(or --tokenizer FILE).")
        return encode_text(text, self.vocab, what)

    def decode(self, ids: np.ndarray) -> str:
        """The characters of `ids`."""
        return decode_tokens(ids, self.vocab)


def read_tokenizer(path: Path, what: str) -> Any:
    """The `tokenizers` Tokenizer in the file `path`; InputError naming `what` (and the file) when it is not a
    tokenizer.json that tokenizers reads (not JSON, `{}`, binary, another file)."""
    tokenizers = optional_import("tokenizers", f"{what} needs the tokenizers package: `pip install tokenizers` (or "
                                               "deploykit[text]).")
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001  (tokenizers raises plain Exceptions for malformed files)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{what} '{path}' is not a tokenizer.json that tokenizers can read ({first}); give the "
                         "tokenizer.json saved with the model.") from exc


def vocabulary_sha256(tokenizer: Any) -> str:
    """sha256 of a tokenizer's id -> token table (added tokens included): two tokenizers that map ids to the same
    strings have the same one, whatever their file's formatting."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    table = json.dumps([tokenizer.id_to_token(i) for i in range(size)], ensure_ascii=False)
    return hashlib.sha256(table.encode()).hexdigest()


class TokenizerCodec:
    """A bundle's tokenizer.json run by the `tokenizers` package (Rust, no torch, no transformers)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer  # Bundle.text_tokenizer: parsed and checked against the manifest once
        self.vocab_size = vocab_size
        self.textual = True

    def encode(self, text: str, what: str = "prompt", special: bool = False) -> np.ndarray:
        """Ids of `text`, through the tokenizer's post-processor (BOS, ...) when `special`; InputError for ids the
        model's vocabulary lacks."""
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=special).ids, np.int64)
        if ids.size and ids.max() >= self.vocab_size:
            raise InputError(f"{what} {text!r} encodes to id {int(ids.max())}, outside the model's vocabulary of "
                             f"{self.vocab_size}; the bundle's tokenizer does not match its model.")
        return ids

    def decode(self, ids: np.ndarray) -> str:
        """Text of `ids` (special tokens skipped)."""
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True))


def token_ids(prompt: Any, index: int) -> np.ndarray:
    """Prompt `index` as int64 token ids; InputError unless it holds integers (floats are not truncated)."""
    try:
        array = np.asarray(prompt)
    except (TypeError, ValueError) as exc:  # ragged or otherwise not array-like
        raise InputError(f"prompt {index} is not a sequence of token ids ({exc}).") from exc
    if array.dtype.kind not in "iu":
        raise InputError(f"prompt {index} holds {array.dtype} values ({str(prompt)[:60]}), expected integer token ids; "
                         "ids too large for int64 count as not integers.")
    return array.astype(np.int64).reshape(-1)


def check_prompts(
    prompts: Sequence[np.ndarray], vocab_size: int, what: str = "prompt", context: int | None = None
) -> np.ndarray:
    """Lengths of the prompts, after checking each is non-empty, within the vocabulary and within `context`."""
    for i, p in enumerate(prompts):
        tokens = np.asarray(p)
        if len(tokens) == 0:
            raise InputError(f"{what} {i} is empty; give at least one token (e.g. a newline).")
        if context is not None and len(tokens) > context:
            raise InputError(f"{what} {i} has {len(tokens)} tokens, more than the model's context of {context}; shorten it.")
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise InputError(
                f"{what} {i} has token ids in [{tokens.min()}, {tokens.max()}], expected [0, {vocab_size - 1}]."
            )
    return np.asarray([len(p) for p in prompts], np.int64)


def pad_prompts(prompts: Sequence[np.ndarray], left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as one int64 array [rows, longest] with 0 at padding, and the 0/1 mask of real tokens.

    left=True right-aligns the rows, so every row's newest token is in the last column.
    """
    width = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        cols = slice(width - len(p), width) if left else slice(0, len(p))
        tokens[i, cols], mask[i, cols] = p, 1
    return tokens, mask


def mode_config(mode: str, max_new_tokens: int, stop: tuple[int, ...] = ()) -> SamplingConfig:
    """The named sampling mode with a length and stop tokens."""
    if mode not in MODES:
        raise InputError(f"unknown sampling mode {mode!r}; choose one of {choices(MODES)}.")
    base = MODES[mode]
    return SamplingConfig(base.temperature, base.top_k, base.top_p, max_new_tokens, stop)


@dataclass(frozen=True, kw_only=True)
class LanguageModelConfig(LoopConfig):
    """Shared by language-model kinds: the graph role, the vocabulary (token strings), the context if bounded,
    and the export-time loop check replayed by verify: `check_tokens` per mode in `check_modes` (the
    defaults are those of bundles exported before these fields existed)."""

    role: str
    vocab: list[str]
    context: int | None = None
    eos: int | None = None  # generation stops at this id (besides any stop tokens asked for)
    in_graph: bool = False  # the bundle also carries the whole sampling loop as one graph (loop_graphs.py)
    check_tokens: int = 200
    check_modes: list[str] = field(default_factory=lambda: list(MODES))

    @property
    def vocab_size(self) -> int:
        """Token ids run 0..vocab_size - 1."""
        return len(self.vocab)


@dataclass(frozen=True, kw_only=True)
class TranslationConfig(LoopConfig):
    """Shared by encoder-decoder kinds: source and target vocabularies, bos / eos ids, the longest decoding."""

    src_vocab: list[str]
    tgt_vocab: list[str]
    bos: int
    eos: int
    max_target_length: int


# The loop check new exports record: greedy (argmax) and top-p (a seeded categorical draw) are the two code paths
# of the token loop; 32 tokens after two left-padded prompts exercise prefill and decode.
CHECK_MODES = ["greedy", "top-p"]
CHECK_TOKENS = 32
# A large model's loop check costs each of its tokens twice (torch eager and onnxruntime): 8 tokens a mode still run
# the prefill and seven cached decodes per prompt, and the per-graph checks compare the numbers at every shape.
CHECK_TOKENS_LARGE, LARGE_MODEL_BYTES = 8, 64 << 20
PROMPT_LENGTHS = (3, 11)  # two prompts of different lengths for the language-model check


def lm_fields(model: object, weights: int) -> dict[str, object]:
    """Fields every language-model config an export records now: the model's optional `eos_token_id`, and the
    loop check (per mode in CHECK_MODES, CHECK_TOKENS tokens, or CHECK_TOKENS_LARGE from LARGE_MODEL_BYTES of
    `weights`)."""
    eos = getattr(model, "eos_token_id", None)
    tokens = CHECK_TOKENS if weights < LARGE_MODEL_BYTES else CHECK_TOKENS_LARGE
    return {"eos": None if eos is None else int(eos), "check_tokens": tokens, "check_modes": list(CHECK_MODES)}


def _padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Rows of different lengths as one int64 array, -1 after each row's end."""
    out = np.full((len(rows), width), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _check_run(loop: LanguageModelConfig, seed: int) -> tuple[list[np.ndarray], int]:
    """The language-model check's prompts and token count for `seed`."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, len(loop.vocab), size=n) for n in PROMPT_LENGTHS]
    longest = max(PROMPT_LENGTHS)
    return prompts, loop.check_tokens if loop.context is None else min(loop.check_tokens, loop.context - longest)


def check_language_model(runners: Runners, loop: LanguageModelConfig, seed: int) -> dict[str, np.ndarray]:
    """check_tokens tokens (fewer if the context is shorter) for two prompts of different lengths, per check mode, by
    the loop graph (when the backend has it) and by the host loop."""
    prompts, count = _check_run(loop, seed)
    lm = kind_of(loop).token_model(runners, loop)
    graph = isinstance(lm, LoopInGraph) and lm.loop_graph is not None
    out = {}
    for mode in loop.check_modes:  # a bundle with a loop graph proves both loops; torch runs the host loop once
        host = _padded(generate(lm, prompts, mode_config(mode, count), seed, host=True), count)
        out[f"tokens.{mode}"] = _padded(generate(lm, prompts, mode_config(mode, count), seed), count) if graph else host
        if loop.in_graph:
            out[f"tokens.{mode}.host"] = host
    return out


def translate_ids(runners: Runners, loop: TranslationConfig, sources: Sequence[np.ndarray], beams: int | None
                  ) -> list[np.ndarray]:
    """Greedy decoding (beams None or 1, batched) or beam search per source, up to eos (excluded)."""
    model = kind_of(loop).token_model(runners, loop)
    limit, eos = loop.max_target_length, loop.eos
    if beams in (None, 1):
        return generate(model, sources, SamplingConfig(temperature=0.0, max_new_tokens=limit, stop=(eos,)))
    return [beam_search(model, s, beams, limit, eos)[0] for s in sources]


def check_translation(runners: Runners, loop: TranslationConfig, seed: int) -> dict[str, np.ndarray]:
    """Greedy (batched) and beam-4 decoding of four random sources."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(0, len(loop.src_vocab), size=n) for n in (1, 4, 9, 12)]
    model = kind_of(loop).token_model(runners, loop)
    width = loop.max_target_length
    greedy = generate(model, sources, mode_config("greedy", width, (loop.eos,)))
    beams = [beam_search(model, s, 4, width, loop.eos)[0] for s in sources]
    return {"greedy": _padded(greedy, width), "beam4": _padded(beams, width)}


def near_tie(logits: np.ndarray, uniform: float, config: SamplingConfig, tokens: tuple[int, int], slack: float) -> bool:
    """Whether logits [vocab] off by up to `slack` each could make `config` pick either of two tokens with this
    uniform: greedy, when their logits are within 2 slack; sampling, when both lie in the stretch of the CDF that
    a shift of the normalized CDF by expm1(2 slack / temperature) (the most such logits can move it) reaches."""
    low, high = sorted(tokens)
    if config.temperature == 0:
        return abs(float(logits[low]) - float(logits[high])) <= 2 * slack
    shift = float(np.expm1(2 * slack / config.temperature))
    ends = np.clip(np.array([uniform - shift, uniform + shift]), 0.0, np.nextafter(1.0, 0.0))
    first, last = pick_tokens(np.repeat(logits[None], 2, 0), ends, config)
    return bool(first <= low and high <= last)


def explain_flips(runners: Runners, loop: LanguageModelConfig, seed: int, expected: Mapping[str, np.ndarray],
                  actual: Mapping[str, np.ndarray], tolerance: Tolerance, bound: float | None) -> dict[str, str]:
    """The language-model check's token outputs (tokens.MODE[.host]) that diverge only where the two picks were a
    near-tie: at each row's first difference, the runners' own logits on the common prefix, off by the logits'
    parity bound (`bound`, else the fixed rule's atol + rtol max |logits|), could pick either (near_tie). The rows
    are not compared after it: from there the two runs continue different texts."""
    prompts, count = _check_run(loop, seed)
    lm = kind_of(loop).token_model(runners, loop)
    atol, rtol = tolerance.of("logits")
    uniforms = np.random.default_rng(seed).random((count, len(prompts)))  # as generate draws them
    notes = {}
    for name, want in expected.items():
        got = actual[name]
        mode = name.split(".")[1]
        if want.shape != got.shape or mode not in MODES:
            continue
        flips = []
        for row in range(len(prompts)):
            differ = np.flatnonzero(want[row] != got[row])
            if not differ.size:
                continue
            step = int(differ[0])
            picks = int(want[row, step]), int(got[row, step])
            if min(picks) < 0:  # one run stopped there: not a pick between two tokens
                break
            logits = lm.start([np.concatenate([prompts[row], want[row, :step]])])[0]
            slack = max(bound or 0.0, atol + rtol * float(np.abs(logits).max()))
            if not near_tie(logits, float(uniforms[step, row]), mode_config(mode, count), picks, slack):
                break
            flips.append(f"row {row} step {step}: {picks[0]} or {picks[1]} within logits +-{slack:.1e}")
        else:
            notes[name] = "near-tie " + "; ".join(flips) + "; not compared after"
    return notes
