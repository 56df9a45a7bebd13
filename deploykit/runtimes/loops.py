"""Loop checks: a short, seeded run of a bundle's sampling loop, stored at export and replayed by verify.

Each check runs the same numpy loop over whatever runners it is given (torch at export, any
backend at verify), so comparing its outputs compares whole loops, not just single graph calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import BundleError
from .autoregressive import (
    MASKED_KINDS,
    autoregressive_violations,
    conditionals_roles,
    sample_dimensionwise,
    sample_nade,
    sample_raster,
    sample_wavenet,
)
from .base import Runner
from .diffusion import DiffusionOptions, denoise, sample_diffusion
from .energy import gibbs_chain, random_states, retrieve
from .flows import ROUND_TRIP_LIMIT, draw_latents, flow_log_prob, round_trip_error, to_data
from .generator import sample_generator
from .recurrent import RecurrentLM, Seq2SeqModel, Stream, sample_vrnn
from .tokens import MODES, TokenModel, beam_search, generate, mode_config
from .transformer import CachedLM, EncoderDecoderLM, FullRecomputeLM
from .vae import interpolate, iwae, sample_vae

# Token models by loop kind: recurrent state, KV cache, full recompute.
LANGUAGE_MODELS: dict[str, Callable[[Runner, Mapping[str, Any]], TokenModel]] = {
    "token_lm": RecurrentLM,
    "kv_cache": CachedLM,
    "full_recompute": FullRecomputeLM,
}
# Encoder-decoder token models by loop kind: recurrent with attention, transformer with caches.
TRANSLATION_MODELS: dict[str, Callable[[Mapping[str, Runner], Mapping[str, Any]], TokenModel]] = {
    "seq2seq": Seq2SeqModel,
    "encoder_decoder": EncoderDecoderLM,
}
LOOP_ROLE = "loop"  # role name of the golden loop run in a manifest
LoopCheck = Callable[[Mapping[str, Runner], Mapping[str, Any], int], dict[str, np.ndarray]]
CHUNKS = (1, 7, 3, 12, 0, 9, 5)  # uneven chunk sizes, one of them empty; 37 steps in all
GENERATED = 200  # tokens per sampling mode
PROMPT_LENGTHS = (3, 11)  # two prompts of different lengths for the language-model check


def _padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Rows of different lengths as one int64 array, -1 after each row's end."""
    out = np.full((len(rows), width), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def stream_input(seed: int, features: int) -> np.ndarray:
    """The [3, 37, features] sequence check_stream feeds."""
    return np.random.default_rng(seed).standard_normal((3, sum(CHUNKS), features)).astype(np.float32)


def check_stream(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Three streams fed in uneven chunks (stream i takes CHUNKS rotated by i): outputs and final states."""
    stream = Stream(runners[loop["role"]], loop, streams=3)
    x = stream_input(seed, stream.features)
    schedules = [CHUNKS[i:] + CHUNKS[:i] for i in range(3)]
    starts = [np.concatenate([[0], np.cumsum(s)]) for s in schedules]
    pieces: list[list[np.ndarray]] = [[], [], []]
    for k in range(len(CHUNKS)):
        chunks = [x[i, starts[i][k] : starts[i][k + 1]] for i in range(3)]
        for i, y in enumerate(stream.push(chunks)):
            pieces[i].append(y)
    return {"y": np.stack([np.concatenate(p) for p in pieces])} | {f"final.{k}": v for k, v in stream.state.items()}


def language_model(runners: Mapping[str, Runner], loop: Mapping[str, Any]) -> TokenModel:
    """The TokenModel for a language-model bundle's loop."""
    return LANGUAGE_MODELS[loop["kind"]](runners[loop["role"]], loop)


def translation_model(runners: Mapping[str, Runner], loop: Mapping[str, Any]) -> TokenModel:
    """The TokenModel for an encoder-decoder bundle's loop."""
    return TRANSLATION_MODELS[loop["kind"]](runners, loop)


def check_token_lm(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """GENERATED tokens (fewer if the context is shorter) for two prompts of different lengths, every mode."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, len(loop["vocab"]), size=n) for n in PROMPT_LENGTHS]
    longest = max(PROMPT_LENGTHS)
    count = min(GENERATED, int(loop.get("context", GENERATED + longest)) - longest)
    lm = language_model(runners, loop)
    return {f"tokens.{mode}": _padded(generate(lm, prompts, mode_config(mode, count), seed), count) for mode in MODES}


def check_seq2seq(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Greedy (batched) and beam-4 decoding of four random sources."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(0, len(loop["src_vocab"]), size=n) for n in (1, 4, 9, 12)]
    model = translation_model(runners, loop)
    width = int(loop["max_target_length"])
    greedy = generate(model, sources, mode_config("greedy", width, (int(loop["eos"]),)))
    beams = [beam_search(model, s, 4, width, int(loop["eos"]))[0] for s in sources]
    return {"greedy": _padded(greedy, width), "beam4": _padded(beams, width)}


def check_vrnn(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Four trajectories of the model's default length."""
    return {"x": sample_vrnn(runners[loop["role"]], loop, 4, None, seed)}


def check_generator(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Eight samples (labels cycling for conditional generators)."""
    return {"images": sample_generator(runners["model"], loop, 8, seed)}


def check_dimensionwise(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Four samples per ordering (FVSBN, MADE), one conditionals pass per dimension."""
    return {f"x.{k}": sample_dimensionwise(runners, loop, 4, seed, k) for k in range(len(loop["roles"]))}


def check_nade(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Four samples by NADE's step recursion."""
    return {"x": sample_nade(runners, loop, 4, seed)}


def check_raster(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Four images in raster order (labels cycling for class-conditional models)."""
    return {"images": sample_raster(runners, loop, 4, seed)}


def check_wavenet(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Fast generation of two clips past one receptive field, and a short naive run."""
    length = int(loop["receptive_field"]) + 44
    return {"fast": sample_wavenet(runners, loop, 2, length, seed), "naive": sample_wavenet(runners, loop, 1, 40, seed, fast=False)}


def check_flow(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Eight samples at temperature 0.8 and their log-density; for MAF / IAF also by the host loop."""
    z = draw_latents(loop, 8, seed, 0.8)
    x = to_data(runners, loop, z)
    out = {"x": x}
    if loop.get("sequential") == "sample":
        out["x.host"] = to_data(runners, loop, z, host=True)
    if loop.get("sequential") == "log_prob":
        out["log_prob"] = flow_log_prob(runners, loop, x)["log_prob"]
        out["log_prob.host"] = flow_log_prob(runners, loop, x, host=True)["log_prob"]
    return out


CHECK_STEPS = {"ddpm": 20, "ddim": 10, "langevin": 3}  # short loops replayed by verify (langevin: per level)
IN_GRAPH_LIMIT = 1e-3  # max |host loop - sampler graph| a diffusion bundle may show on its own backend


def _diffusion_runs(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int, host: bool) -> dict[str, np.ndarray]:
    """Four samples per scheduler (DDIM with eta 0.5; guidance 3 for conditional models), host or in-graph."""
    guidance = 3.0 if loop.get("num_classes") else None
    out = {}
    for name in loop["schedulers"]:
        options = DiffusionOptions(name, 0.5 if name == "ddim" else None, guidance)
        out[name] = denoise(runners, loop, 4, seed, None, CHECK_STEPS[name], host, options)
    return out


def check_diffusion(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Short loops per scheduler on the host and in the sampler graph; latent diffusion also decodes."""
    out = {f"x.{k}.host": v for k, v in _diffusion_runs(runners, loop, seed, True).items()}
    out |= {f"x.{k}.graph": v for k, v in _diffusion_runs(runners, loop, seed, False).items()}
    if "decoder" in loop:
        out["decoded"] = sample_diffusion(runners, loop, 4, seed, steps=CHECK_STEPS["ddim"],
                                          options=DiffusionOptions("ddim"))
    return out


def check_vae(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Eight prior samples, an 8-point interpolation and the 16-sample IWAE estimate of four random binary x."""
    x = (np.random.default_rng(seed).random((4, int(loop["input_dim"]))) < 0.3).astype(np.float32)
    return {"samples": sample_vae(runners, loop, 8, seed), "interpolation": interpolate(runners, loop, 8, seed),
            "iwae": iwae(runners, loop, x, 16, seed)}


def check_gibbs(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """A 25-step chain of four samples, in one graph call and one call per step."""
    graph, host = (gibbs_chain(runners["gibbs"], loop, 4, 25, seed, per_call) for per_call in (None, 1))
    return {f"{k}.graph": v for k, v in graph.items()} | {f"{k}.host": v for k, v in host.items()}


def check_hopfield(runners: Mapping[str, Runner], loop: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Retrieval from eight random states: final states, update counts, energies."""
    found = retrieve(runners["update"], loop, random_states(loop, 8, seed))
    return {"states": found.states, "iterations": found.iterations, "energy": found.energy}


def structure_problems(runners: Mapping[str, Runner], loop: Mapping[str, Any]) -> list[str]:
    """What makes a bundle's graphs wrong beyond parity: masked models whose outputs see later inputs,
    flows whose sample graph does not invert their log_prob graph, diffusion sampler graphs that do
    not reproduce the host loop. Empty when all is well."""
    if loop.get("kind") == "flow":
        error = round_trip_error(runners, loop)
        if not error <= ROUND_TRIP_LIMIT:
            return [f"'sample' does not invert 'log_prob': max |x - sample(log_prob(x).z)| = {error:.3g} "
                    f"(limit {ROUND_TRIP_LIMIT}); check that inverse() undoes forward()"]
        return []
    if loop.get("kind") == "diffusion":
        host, graph = (_diffusion_runs(runners, loop, 0, h) for h in (True, False))
        gaps = {k: float(np.abs(host[k] - graph[k]).max()) for k in host}
        return [(f"the 'sampler' graph does not reproduce the host loop of '{k}': max |host - graph| = {g:.3g} "
                 f"(limit {IN_GRAPH_LIMIT})") for k, g in gaps.items() if not g <= IN_GRAPH_LIMIT]
    if loop.get("kind") not in MASKED_KINDS:
        return []
    problems = []
    for k, role in enumerate(conditionals_roles(loop)):
        bad = autoregressive_violations(runners[role], loop, k)
        if bad:
            problems.append(f"'{role}' is not autoregressive: output(s) change when a later input does, e.g. (input, output) {bad[:3]}")
    return problems


LOOP_CHECKS: dict[str, LoopCheck] = {
    "stream": check_stream,
    "token_lm": check_token_lm,
    "kv_cache": check_token_lm,
    "full_recompute": check_token_lm,
    "seq2seq": check_seq2seq,
    "encoder_decoder": check_seq2seq,
    "vrnn": check_vrnn,
    "generator": check_generator,
    "dimensionwise": check_dimensionwise,
    "nade": check_nade,
    "raster": check_raster,
    "wavenet": check_wavenet,
    "flow": check_flow,
    "diffusion": check_diffusion,
    "vae": check_vae,
    "gibbs": check_gibbs,
    "hopfield": check_hopfield,
}


def loop_check(loop: Mapping[str, Any]) -> LoopCheck:
    """The check for a bundle's loop kind; BundleError for a kind this deploykit does not know."""
    kind = loop.get("kind")
    if kind not in LOOP_CHECKS:
        raise BundleError(f"this bundle records a '{kind}' loop run, which this deploykit cannot replay; upgrade deploykit.")
    return LOOP_CHECKS[kind]
