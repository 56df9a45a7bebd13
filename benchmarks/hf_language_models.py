"""Real-size language models through hf:DIR beside the peers: a GPT-2-small-shaped and a Llama-style model of ~124M
parameters (random init from configs, saved with save_pretrained with a byte-level BPE tokenizer; nothing downloaded).

Per model, each build in a fresh process (CPU-seconds of the process and its children, peak RSS):
deploykit export, quantize int8-dynamic and int4, the same after `export --fuse` and after `export --family gpt-inplace
--fuse` (the in-place KV cache); optimum-onnx export (fp32) and its int8 dynamic quantizer;
onnxruntime-genai's model builder at fp32 and int4 (block 32, accuracy level 4, as deploykit's int4 default).
Then greedy decode tokens/s (32-token prompt, 128 new tokens, batch 1 and 8, one thread each) for every engine in
one process, rounds interleaved (the order reversed every other round), median and spread; Hugging Face
`generate` in torch eager is the baseline. Peak RSS of each engine: a fresh process loading it and decoding once
at batch 1. Last, the fp32 ceiling (tokens/s if a step only read the weights once) and deploykit's quantize
accuracy rows (int8, int4) from the manifests.

optimum-onnx pins transformers < 4.58, so the peers run in their own environment (`make peers-env`:
.venv-peers, with deploykit on its path for the torch-free decode); the genai builder runs here (it needs
transformers 5).

    python benchmarks/hf_language_models.py [--arch gpt2 llama] [--threads 1] [--repeats 3] [--peers .venv-peers/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT, NEW, BATCHES = [(7 * i + 3) % 300 + 10 for i in range(32)], 128, (1, 8)

BUILD = {  # name -> (environment, command list run with that environment's python)
    "deploykit fp32": ("here", ["-m", "deploykit", "export", "hf:{model}", "--out", "{out}"]),
    "deploykit int8": ("here", ["-m", "deploykit", "quantize", "{work}/deploykit fp32", "--mode", "int8-dynamic",
                                "--out", "{out}"]),
    "deploykit int4": ("here", ["-m", "deploykit", "quantize", "{work}/deploykit fp32", "--mode", "int4", "--out", "{out}"]),
    "deploykit fused fp32": ("here", ["-m", "deploykit", "export", "hf:{model}", "--fuse", "--out", "{out}"]),
    "deploykit fused int8": ("here", ["-m", "deploykit", "quantize", "{work}/deploykit fused fp32", "--mode",
                                      "int8-dynamic", "--out", "{out}"]),
    "deploykit fused int4": ("here", ["-m", "deploykit", "quantize", "{work}/deploykit fused fp32", "--mode", "int4",
                                      "--out", "{out}"]),
    "deploykit in-place fp32": ("here", ["-m", "deploykit", "export", "hf:{model}", "--family", "gpt-inplace",
                                         "--fuse", "--out", "{out}"]),
    "deploykit in-place int8": ("here", ["-m", "deploykit", "quantize", "{work}/deploykit in-place fp32", "--mode",
                                         "int8-dynamic", "--out", "{out}"]),
    "deploykit in-place int4": ("here", ["-m", "deploykit", "quantize", "{work}/deploykit in-place fp32", "--mode",
                                         "int4", "--out", "{out}"]),
    "genai fp32": ("here", ["-m", "onnxruntime_genai.models.builder", "-i", "{model}", "-o", "{out}", "-p", "fp32",
                            "-e", "cpu", "-c", "{work}/cache"]),
    "genai int4": ("here", ["-m", "onnxruntime_genai.models.builder", "-i", "{model}", "-o", "{out}", "-p", "int4",
                            "-e", "cpu", "-c", "{work}/cache", "--extra_options", "int4_block_size=32",
                            "int4_accuracy_level=4"]),
    "optimum fp32": ("peers", ["-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", "{model}", "--task",
                               "text-generation-with-past", "{out}"]),
    "optimum int8": ("peers", ["-c", "from optimum.onnxruntime import ORTQuantizer\n"
                               "from optimum.onnxruntime.configuration import AutoQuantizationConfig\n"
                               "q = ORTQuantizer.from_pretrained('{work}/optimum fp32')\n"
                               "q.quantize(save_dir='{out}', quantization_config="
                               "AutoQuantizationConfig.avx2(is_static=False, per_channel=False))"]),
}

DECODE = r"""
import json, os, statistics, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
threads, prompt, new = spec["threads"], spec["prompt"], spec["new"]

def engine(name, path):
    if name == "hf generate":
        import torch, transformers
        torch.set_num_threads(threads)
        model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        def run(batch):
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt] * batch), max_new_tokens=new, min_new_tokens=new,
                                     do_sample=False, pad_token_id=0)
            return out[:, len(prompt):].tolist()
    elif name.startswith("deploykit"):
        import deploykit
        from deploykit.backends import RunnerOptions
        from deploykit.runtimes.tokens import mode_config
        dep = deploykit.load(path, options=RunnerOptions(threads=threads))
        config = mode_config("greedy", new)
        run = lambda batch: [row.tolist() for row in dep.generate_ids([prompt] * batch, config)]  # stops at EOS
    elif name.startswith("optimum"):
        import onnxruntime, torch
        from optimum.onnxruntime import ORTModelForCausalLM
        torch.set_num_threads(threads)
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        model = ORTModelForCausalLM.from_pretrained(path, session_options=so)
        def run(batch):
            out = model.generate(torch.tensor([prompt] * batch), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0)
            return out[:, len(prompt):].tolist()
    else:
        import onnxruntime_genai as og
        settings = json.loads(open(path + "/genai_config.json").read())
        settings["model"]["decoder"]["session_options"] |= {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        open(path + "/genai_config.json", "w").write(json.dumps(settings, indent=2))
        config = og.Config(path)
        config.clear_providers()
        model = og.Model(config)
        def run(batch):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(prompt) + new, min_length=len(prompt) + new, do_sample=False,
                                      batch_size=batch)
            generator = og.Generator(model, params)
            generator.append_tokens(np.asarray([prompt] * batch, np.int32))
            while not generator.is_done():
                generator.generate_next_token()
            return [generator.get_sequence(i)[len(prompt):].tolist() for i in range(batch)]
    return run

engines = {name: engine(name, path) for name, path in spec["engines"].items()}
if spec["rss"]:
    next(iter(engines.values()))(1)
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(json.dumps({"peak_rss_mb": peak / 1024}))
    raise SystemExit
out = {}
for batch in spec["batches"]:
    for run in engines.values():
        run(batch)  # warm-up
    rates, tokens = {n: [] for n in engines}, {}
    for r in range(spec["repeats"]):
        for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            start = time.perf_counter()
            got = engines[name](batch)
            rates[name].append(sum(map(len, got)) / (time.perf_counter() - start))
            tokens[name] = got
    out[batch] = {n: {"median": statistics.median(v), "spread": (max(v) - min(v)) / 2, "tokens": tokens[n]}
                  for n, v in rates.items()}
print(json.dumps(out))
"""


class Failed(Exception):
    """A command that exited non-zero: its last stderr line."""


def _run(python: str, args: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """stdout of `python args` and the CPU-seconds (user + system) it and its children used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise Failed((run.stderr.strip().splitlines() or ["exit " + str(run.returncode)])[-1][:160])
    return run.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _timed_build(python: str, args: list[str], env: dict[str, str] | None) -> tuple[float, float]:
    """CPU-seconds and peak RSS (MiB, GNU time's maximum resident set) of one build command."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        _, cpu = _run("/usr/bin/time", ["-f", "%M", "-o", report.name, python, *args], env)
        return cpu, int(report.read().split()[-1]) / 1024


def save_model(arch: str, folder: Path, seed: int = 0, init: float = 0.02) -> int:
    """A random-init ~124M `arch` (gpt2 | llama) saved with save_pretrained (weights N(0, init)) beside a tokenizer;
    its parameter count."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if arch == "gpt2":  # GPT-2 small: 124M
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(initializer_range=init))
    else:  # Llama-style at a similar size: RoPE, RMSNorm, SwiGLU, 4 key/value heads for 12 query heads
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=4, max_position_embeddings=2048, initializer_range=init))
    model.save_pretrained(folder)
    _save_tokenizer(folder)
    return sum(p.numel() for p in model.parameters())


def _save_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer (trained on the Zen of Python: a few hundred tokens of the model's vocabulary)
    saved beside the model as save_pretrained writes it: the peers' builders refuse a folder without one."""
    import codecs

    import tokenizers
    import transformers

    with contextlib.redirect_stdout(io.StringIO()):
        import this
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(codecs.decode(this.s, "rot13").splitlines(), trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
                                         ).save_pretrained(folder)


def _weight_read_ceiling(params: int, threads: int, repeats: int = 5) -> float:
    """Tokens/s if a decode step did nothing but read the fp32 weights once: the fastest of `repeats` passes of
    torch.mv (MKL sgemv, bandwidth-bound) over a matrix of the model's size, at `threads`. Every fp32 decoder reads
    each weight once per token at batch 1, so none can beat it."""
    import time

    import torch

    torch.set_num_threads(threads)
    matrix, vector = torch.randn(params // 768, 768), torch.randn(768)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mv(matrix, vector)
        best = min(best, time.perf_counter() - start)
    return 1 / best


def _size(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("**/*") if f.is_file() and "golden" not in f.parts) / 2**20


def _arch(arch: str, work: Path, args: argparse.Namespace, pythons: dict[str, str], peers_env: dict[str, str]) -> None:
    """Build, decode and report one architecture in `work`."""
    params = save_model(arch, work / "model")
    weights_mb = params * 4 / 2**20
    print(f"\n## {arch}: {params / 1e6:.1f}M parameters, {weights_mb:.0f} MiB fp32 weights "
          f"({args.threads} thread, {args.repeats} interleaved rounds, {len(PROMPT)}-token prompt, {NEW} new tokens)")
    builds = {}
    for name, (where, template) in BUILD.items():
        fill = {"model": str(work / "model"), "out": str(work / name), "work": str(work)}
        try:
            builds[name] = _timed_build(pythons[where], [a.format(**fill) for a in template], peers_env)
        except Failed as exc:  # e.g. onnxruntime-genai 0.18's builder has no GPT-2
            print(f"{name}: build failed ({exc}); left out")
    engines = {"hf generate": str(work / "model")} | {name: str(work / name) for name in builds}
    rss = {}
    for name, path in engines.items():
        spec = {"threads": args.threads, "prompt": PROMPT, "new": NEW, "engines": {name: path}, "rss": True}
        rss[name] = json.loads(_run(args.peers, ["-c", DECODE, json.dumps(spec)], peers_env)[0])["peak_rss_mb"]
    spec = {"threads": args.threads, "prompt": PROMPT, "new": NEW, "engines": engines, "rss": False,
            "batches": BATCHES, "repeats": args.repeats}
    rates = json.loads(_run(args.peers, ["-c", DECODE, json.dumps(spec)], peers_env)[0])
    print("\n| engine | build CPU-s | build peak MiB | size MiB | decode peak RSS MiB | "
          + " | ".join(f"batch {b} tok/s (x HF)" for b in BATCHES) + " | greedy tokens = HF (batch 1) |")
    print("|---" * (6 + len(BATCHES)) + "|")
    for name in engines:
        cpu, peak = builds.get(name, (0.0, 0.0))
        cells = []
        for b in BATCHES:
            r, hf = rates[str(b)][name], rates[str(b)]["hf generate"]["median"]
            cells.append(f"{r['median']:.1f} +-{r['spread']:.1f} ({r['median'] / hf:.2f}x)")
        same = rates["1"][name]["tokens"] == rates["1"]["hf generate"]["tokens"]
        built = f"{cpu:.0f} | {peak:.0f}" if name in builds else "- | -"
        size = f"{_size(Path(engines[name])):.0f}"
        print(f"| {name} | {built} | {size} | {rss[name]:.0f} | {' | '.join(cells)} | {same} |")
    print(f"fp32 weight-read ceiling at batch 1: {_weight_read_ceiling(params, args.threads):.1f} tok/s")
    for name in (n for n in builds if n.startswith("deploykit") and n.endswith(("int8", "int4"))):
        manifest = json.loads((work / name / "manifest.json").read_text())
        for row in manifest["precision"]["accuracy"]:
            print(f"{name}: {row['metric']}: fp32 {row['fp32']:.4g}, quantized {row['quantized']:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                        help="python of the environment with optimum-onnx and onnxruntime-genai (make peers-env)")
    args = parser.parse_args()
    if not Path(args.peers).exists():
        raise SystemExit(f"{args.peers} not found: `make peers-env` builds the peers' environment.")
    pythons = {"here": sys.executable, "peers": args.peers}
    peers_env = os.environ | {"PYTHONPATH": str(ROOT)}
    for arch in args.arch:  # each in its own folder, removed after (the builds take gigabytes)
        with tempfile.TemporaryDirectory(prefix=f"hf-{arch}-") as work:
            _arch(arch, Path(work), args, pythons, peers_env)


if __name__ == "__main__":
    main()
