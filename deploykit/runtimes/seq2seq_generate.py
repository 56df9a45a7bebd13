"""Loop kind `seq2seq_generate`: an encoder-decoder's greedy and beam search as transformers' `generate` runs them
(transformers 5, `generation/utils.py` `_sample` with do_sample=False and `_beam_search`), in numpy over the
`encoder` + `decoder_with_past` graphs of EncoderDecoderLM, so a bundle exported from an `hf:DIR` BART, T5 or Marian
folder decodes token for token as the folder's `generation_config.json` asks.

Carried over from the folder: the decoder start token, the stop (eos) tokens, max_length (counting the start
token), min_length, num_beams, length_penalty, early_stopping (True, False or "never"), no_repeat_ngram_size,
encoder_no_repeat_ngram_size (n-grams of the source, right-padded with `pad` as a batch is), repetition_penalty, single-token bad_words_ids, forced BOS / EOS tokens, suppressed tokens and the tokens suppressed
at the first step. Processors run in transformers' order: on the logits for greedy, on the
log-softmax for beam search, in float32 as transformers does. Sampling settings (do_sample, temperature, top-k/p)
are not applied: the bundle decodes deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import BundleError
from .kinds import TEXT, LoopKind, Runners, register
from .tokens import check_prompts
from .transformer import EncoderDecoderConfig, EncoderDecoderLM

NEVER = "never"
CHECK_LENGTH = 12  # max_length of the export's loop check (the folder's may be 512): every processor still runs


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(EncoderDecoderConfig):
    """EncoderDecoderConfig with transformers' generation settings (`bos` is the decoder start token, `eos` the first
    stop token, `max_target_length` max_length - 1)."""

    kind = "seq2seq_generate"
    stops: list[int]  # every eos id
    pad: int  # what transformers fills finished rows with (greedy)
    max_length: int  # counts the decoder start token
    min_length: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    encoder_no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    bad_words: list[int] | None = None  # single-token bad_words_ids (eos excluded, as transformers does)
    forced_bos: int | None = None
    forced_eos: list[int] | None = None
    suppress: list[int] | None = None
    begin_suppress: list[int] | None = None
    begin_index: int = 1  # the sequence length at which begin_suppress applies

    @property
    def vocab_size(self) -> int:
        """Token ids run 0..vocab_size - 1 (source and target share the tokenizer)."""
        return len(self.tgt_vocab)

    def validate(self, where: str) -> None:
        """BundleError for settings the search cannot run."""
        if self.max_length < 2 or self.num_beams < 1 or not self.stops:
            raise BundleError(f"{where}: max_length {self.max_length}, num_beams {self.num_beams}, stops {self.stops}: "
                              "re-export the bundle.")
        if isinstance(self.early_stopping, str) and self.early_stopping != NEVER:
            raise BundleError(f"{where}: early_stopping is {self.early_stopping!r}, expected true, false or 'never'.")


Grams = list[dict[tuple[int, ...], list[int]]]  # per row: the source's n-grams, (first n - 1 tokens) -> last tokens


def _source_grams(loop: GenerateConfig, sources: Sequence[np.ndarray], repeat: int) -> Grams | None:
    """Each source's n-grams of encoder_no_repeat_ngram_size (rows right-padded with `pad` to the longest, as the
    batch transformers sees), each row `repeat` times (beams); None when the setting is off."""
    n = loop.encoder_no_repeat_ngram_size
    if not n:
        return None
    width = max(len(s) for s in sources)
    out: Grams = []
    for source in sources:
        row = [int(t) for t in source] + [loop.pad] * (width - len(source))
        grams: dict[tuple[int, ...], list[int]] = {}
        for i in range(len(row) - n + 1):
            grams.setdefault(tuple(row[i:i + n - 1]), []).append(row[i + n - 1])
        out += [grams] * repeat
    return out


def _process(loop: GenerateConfig, sequences: np.ndarray, scores: np.ndarray, grams: Grams | None) -> np.ndarray:
    """transformers' logits processors, in its order, over scores [rows, vocab] given the sequences so far [rows, t]
    (and the sources' n-grams, `_source_grams`)."""
    scores = scores.copy()
    length = sequences.shape[1]
    if loop.repetition_penalty != 1.0:
        rows = np.arange(len(scores))[:, None]
        seen = scores[rows, sequences]
        scores[rows, sequences] = np.where(seen < 0, seen * np.float32(loop.repetition_penalty),
                                           seen / np.float32(loop.repetition_penalty))
    n = loop.no_repeat_ngram_size
    if n and length >= n:
        for row, tokens in enumerate(sequences.tolist()):
            prefix = tokens[length + 1 - n:]
            banned = {tokens[i + n - 1] for i in range(length - n + 1) if tokens[i:i + n - 1] == prefix}
            scores[row, sorted(banned)] = -np.inf
    if grams is not None:  # transformers slices the same way, a negative start included
        n = loop.encoder_no_repeat_ngram_size
        for row, tokens in enumerate(sequences.tolist()):
            scores[row, grams[row].get(tuple(tokens[length + 1 - n:length]), [])] = -np.inf
    if loop.bad_words:
        scores[:, loop.bad_words] = -np.inf
    if length < loop.min_length:
        scores[:, loop.stops] = -np.inf
    if loop.forced_bos is not None and length == 1:
        scores[:] = -np.inf
        scores[:, loop.forced_bos] = 0
    if loop.forced_eos and length == loop.max_length - 1:
        scores[:] = -np.inf
        scores[:, loop.forced_eos] = 0
    if loop.suppress:
        scores[:, loop.suppress] = -np.inf
    if loop.begin_suppress and length == loop.begin_index:
        scores[:, loop.begin_suppress] = -np.inf
    return scores


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).astype(np.float32)


def _cut(row: np.ndarray, stops: Sequence[int]) -> np.ndarray:
    """The generated tokens of one row, through its first stop token."""
    hits = np.flatnonzero(np.isin(row, stops))
    return row[: hits[0] + 1] if hits.size else row


def greedy(model: EncoderDecoderLM, loop: GenerateConfig, sources: Sequence[np.ndarray]) -> list[np.ndarray]:
    """transformers' greedy search (batched): per source, the tokens after the decoder start, through the first stop
    token."""
    rows = len(sources)
    sequences = np.full((rows, 1), loop.bos, np.int64)
    unfinished = np.ones(rows, bool)
    grams = _source_grams(loop, sources, 1)
    logits = model.start(sources)
    while True:
        scores = _process(loop, sequences, logits.astype(np.float32), grams)
        tokens = np.where(unfinished, scores.argmax(-1), loop.pad)
        sequences = np.concatenate([sequences, tokens[:, None]], 1)
        unfinished &= ~np.isin(tokens, loop.stops)
        if not unfinished.any() or sequences.shape[1] >= loop.max_length:
            return [_cut(row[1:], loop.stops) for row in sequences]
        logits = model.step(tokens)


def _penalty(length: int, exponent: float) -> np.float32:
    """length ** exponent as transformers divides by it: a Python float (double), then float32."""
    return np.float32(float(length) ** exponent)


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries per row, largest first (ties: lowest index first): a partition, then a sort
    of those k only (a full sort of beams x vocab candidates was a third of a BART-base beam step)."""
    if x.shape[-1] <= 64 * k:
        return np.argsort(-x, axis=-1, kind="stable")[..., :k]
    out = np.empty((*x.shape[:-1], k), np.int64)
    for index in np.ndindex(*x.shape[:-1]):
        row = x[index]
        threshold = np.partition(row, row.size - k)[row.size - k]  # the k-th largest value
        above = np.flatnonzero(row > threshold)
        chosen = np.concatenate([above, np.flatnonzero(row == threshold)[: k - above.size]])
        out[index] = chosen[np.lexsort((chosen, -row[chosen]))]
    return out


def _gather(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """x[b, index[b, j], ...] for every b, j."""
    return np.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), 1)


def beam_search(model: EncoderDecoderLM, loop: GenerateConfig, sources: Sequence[np.ndarray],
                beams: int) -> list[np.ndarray]:
    """transformers' beam search over all sources at once: per source, the best hypothesis's tokens after the decoder
    start (through its stop token, if it has one)."""
    batch, vocab = len(sources), model.vocab_size
    keep = max(2, 1 + len(loop.stops)) * beams
    top_mask = np.arange(keep) < beams
    width = loop.max_length
    fill = loop.pad if loop.pad else loop.stops[0]  # transformers' `pad_token_id or eos_token_id[0]`
    running = np.full((batch, beams, width), fill, np.int64)
    running[:, :, 0] = loop.bos
    done_seqs = running.copy()
    running_scores = np.zeros((batch, beams), np.float32)
    running_scores[:, 1:] = -1e9
    done_scores = np.full((batch, beams), -1e9, np.float32)
    finished = np.zeros((batch, beams), bool)
    improvable = np.ones((batch, 1), bool)
    generated = np.zeros((batch, beams), np.int64)  # each kept hypothesis's generated length
    done_generated = generated.copy()
    length = 1
    grams = _source_grams(loop, sources, beams)
    model_logits = model.start(sources)
    model.select(np.repeat(np.arange(batch), beams))
    model_logits = np.repeat(model_logits, beams, 0)
    while True:
        log_probs = _process(loop, running[:, :, :length].reshape(batch * beams, length),
                             _log_softmax(model_logits.astype(np.float32)), grams)
        total = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)
        order = _top(total, keep)
        top_scores = _gather(total, order)
        parents, tokens = order // vocab, order % vocab
        candidates = _gather(running, parents).copy()
        candidates[:, :, length] = tokens
        candidate_generated = _gather(generated, parents) + 1
        hits = np.isin(tokens, loop.stops) | (length + 1 >= width)
        # e. the best `beams` candidates that did not stop run on
        alive = top_scores + hits.astype(np.float32) * np.float32(-1e9)
        pick = _top(alive, beams)
        running, running_scores = _gather(candidates, pick), _gather(alive, pick)
        generated, rows = _gather(candidate_generated, pick), _gather(parents, pick)
        # f. stopped candidates among the top `beams` join the finished ones, scored with the length penalty
        just = hits & top_mask[None]
        scored = top_scores / _penalty(length, loop.length_penalty)
        scored += (finished.all(-1, keepdims=True) & (loop.early_stopping is True)).astype(np.float32) * np.float32(-1e9)
        scored += (~improvable).astype(np.float32) * np.float32(-1e9)
        scored += (~just).astype(np.float32) * np.float32(-1e9)
        merged = np.concatenate([done_scores, scored], 1)
        best = _top(merged, beams)
        done_seqs = _gather(np.concatenate([done_seqs, candidates], 1), best)
        done_generated = _gather(np.concatenate([done_generated, candidate_generated], 1), best)
        done_scores = _gather(merged, best)
        finished = _gather(np.concatenate([finished, just], 1), best)
        length += 1
        # g. can the running beams still beat the worst finished one?
        hypothetical = (width - 1) if loop.early_stopping == NEVER and loop.length_penalty > 0 else (length - 1)
        best_running = running_scores[:, :1] / _penalty(hypothetical, loop.length_penalty)
        worst_done = np.where(finished, done_scores.min(1, keepdims=True), np.float32(-1e9))
        improvable = improvable & (best_running > worst_done).any(-1, keepdims=True)
        if not improvable.any() or (finished.all() and loop.early_stopping is True) or hits.all():
            break
        model.select((rows + np.arange(batch)[:, None] * beams).reshape(-1))
        model_logits = model.step(running[:, :, length - 1].reshape(-1))
    return [done_seqs[b, 0, 1:1 + done_generated[b, 0]] for b in range(batch)]


def translate(runners: Runners, loop: GenerateConfig, sources: Sequence[np.ndarray], beams: int | None
              ) -> list[np.ndarray]:
    """Greedy (beams 1) or beam search, `beams` (checked by Deployment.translate_ids) defaulting to the folder's
    num_beams."""
    beams = loop.num_beams if beams is None else beams
    check_prompts(sources, len(loop.src_vocab), "source")
    model = EncoderDecoderLM(runners, loop)
    return greedy(model, loop, sources) if beams == 1 else beam_search(model, loop, sources, beams)


def check(runners: Runners, loop: GenerateConfig, seed: int) -> dict[str, np.ndarray]:
    """Greedy and beam-4 search (max_length CHECK_LENGTH at most) of four random sources of different lengths."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(0, len(loop.src_vocab), size=n) for n in (1, 4, 9, 12)]
    short = _shortened(loop)
    out = {}
    for name, beams in (("greedy", 1), ("beam4", 4)):
        rows = translate(runners, short, sources, beams)
        padded = np.full((len(rows), short.max_length), -1, np.int64)
        for i, row in enumerate(rows):
            padded[i, :len(row)] = row
        out[name] = padded
    return out


def _shortened(loop: GenerateConfig) -> GenerateConfig:
    length = min(loop.max_length, CHECK_LENGTH)
    return replace(loop, max_length=length, max_target_length=length - 1, min_length=min(loop.min_length, length))


register(LoopKind(GenerateConfig, "encoder-decoder (transformers generate)", "translate", check=check, writer=TEXT,
                  token_model=EncoderDecoderLM, translate=translate))
