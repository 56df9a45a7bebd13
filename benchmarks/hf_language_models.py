"""Real-size language models through hf:DIR: a GPT-2-small-shaped and a Llama-style model of ~124M parameters
(random init from configs, saved with save_pretrained; nothing downloaded).

Per model, in fresh processes so peak RSS is the step's own: export wall time and peak RSS (vs the fp32
weights), bundle size and the golden vectors' share, `deploykit.load` + session start time and RSS, then
greedy decode tokens/s at batch 1 (32-token prompt, 128 new tokens) for deploykit on onnxruntime against
Hugging Face `generate(do_sample=False)` in torch eager with its cache, same weights, same thread count
(1 and 2), blocks interleaved, median of 3 (tokens compared). Last, the int8-dynamic bundle (`quantize`):
its tokens/s and its top-1 agreement with fp32 along the fp32 greedy continuation. Beside the fp32 rates, the
ceiling a decoder cannot pass on this machine: tokens/s if a step only read the fp32 weights once (sgemv).

    python benchmarks/hf_language_models.py [--arch gpt2 llama] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = r"""
import json, resource, sys, time
t = time.perf_counter()
step, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
if step == "export":
    import deploykit
    from deploykit.sources import resolve
    r = resolve("hf:" + folder)
    deploykit.export(r.model, r.family, out, source=r.source, tokenizer=r.tokenizer)
elif step == "quantize":
    from deploykit.precision import quantize
    quantize(folder, "int8-dynamic", out)
else:
    import deploykit
    with deploykit.load(folder) as dep:
        pass
    assert "onnx" not in sys.modules and "torch" not in sys.modules
try:  # this process's own peak: ru_maxrss also counts the parent's pages at fork (Linux keeps it across exec)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": peak / 1024}))
"""


def _step(*args: str) -> dict[str, float]:
    run = subprocess.run([sys.executable, "-c", STEP, *args], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def save_model(arch: str, folder: Path, seed: int = 0, init: float = 0.02) -> int:
    """A random-init ~124M `arch` (gpt2 | llama) saved with save_pretrained (weights N(0, init)); its parameter count."""
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
    return sum(p.numel() for p in model.parameters())


def _tokens_per_second(arch_dir: Path, bundle: Path, threads: int, repeats: int, prompt: list[int], new: int
                       ) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    import torch
    import transformers

    import deploykit
    from deploykit.backends import RunnerOptions
    from deploykit.runtimes.tokens import mode_config

    torch.set_num_threads(threads)
    hf = transformers.AutoModelForCausalLM.from_pretrained(arch_dir, local_files_only=True).eval()
    config = mode_config("greedy", new)
    rates: dict[str, list[float]] = {"deploykit": [], "hf": []}
    tokens: dict[str, list[int]] = {}
    with deploykit.load(bundle, options=RunnerOptions(threads=threads)) as dep:
        for _ in range(repeats):  # alternate the two in blocks: drift on a shared machine hits both
            start = time.perf_counter()
            ours = dep.generate_ids([prompt], config)[0]
            rates["deploykit"].append(len(ours) / (time.perf_counter() - start))
            with torch.no_grad():
                start = time.perf_counter()
                out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
                rates["hf"].append(new / (time.perf_counter() - start))
            tokens = {"deploykit": ours.tolist(), "hf": out[0, len(prompt):].tolist()}
    return rates, tokens


def _weight_read_ceiling(params: int, threads: int, repeats: int = 5) -> float:
    """Tokens/s if a decode step did nothing but read the fp32 weights once: the fastest of `repeats` passes of
    torch.mv (MKL sgemv, bandwidth-bound) over a matrix of the model's size, at `threads`. Every fp32 decoder,
    HF's and ours, reads each weight once per token, so neither can beat it."""
    import torch

    torch.set_num_threads(threads)
    matrix, vector = torch.randn(params // 768, 768), torch.randn(768)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mv(matrix, vector)
        best = min(best, time.perf_counter() - start)
    return 1 / best


def _top1_agreement(full: Path, low: Path, sequence: list[int]) -> float:
    """Argmax agreement of the int8 and fp32 graphs at every position of one prefill over `sequence`."""
    import numpy as np

    import deploykit

    preds = []
    for path in (full, low):
        with deploykit.load(path) as dep:
            loop = dep.loop
            feeds = {"input_ids": np.asarray([sequence], np.int64),
                     "position_ids": np.arange(len(sequence), dtype=np.int64)[None],
                     "attention_mask": np.ones((1, len(sequence)), np.int64)}
            empty = np.zeros((1, loop.heads, 0, loop.head_dim), np.float32)
            feeds |= {f"past_key_values.{i}.{p}": empty for i in range(loop.layers) for p in ("key", "value")}
            preds.append(dep.infer(feeds)["logits"][0].argmax(-1))
    return float((preds[0] == preds[1]).mean())


def _size(path: Path, pattern: str = "**/*") -> float:
    return sum(f.stat().st_size for f in path.glob(pattern) if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompt = [(7 * i + 3) % 1000 + 10 for i in range(32)]
    for arch in args.arch:
        work = Path(tempfile.mkdtemp(prefix=f"hf-{arch}-"))
        params = save_model(arch, work / "model")
        weights_mb = params * 4 / 2**20
        print(f"\n## {arch}: {params / 1e6:.1f}M parameters, {weights_mb:.0f} MiB fp32 weights")
        exp = _step("export", str(work / "model"), str(work / "bundle"))
        print(f"export: {exp['seconds']:.1f} s, peak RSS {exp['peak_rss_mb']:.0f} MiB ({exp['peak_rss_mb'] / weights_mb:.2f}x weights)")
        total, golden = _size(work / "bundle"), _size(work / "bundle", "golden/*")
        print(f"bundle: {total:.0f} MiB, golden vectors {golden:.1f} MiB ({100 * golden / total:.1f} %)")
        load = _step("load", str(work / "bundle"), "")
        print(f"load + sessions: {load['seconds']:.2f} s, peak RSS {load['peak_rss_mb']:.0f} MiB "
              f"({load['peak_rss_mb'] / weights_mb:.2f}x weights), no onnx / torch import")
        quant = _step("quantize", str(work / "bundle"), str(work / "int8"))
        print(f"quantize int8-dynamic: {quant['seconds']:.1f} s, bundle {_size(work / 'int8'):.0f} MiB")
        print("\n| threads | deploykit ORT tok/s | HF generate (torch) tok/s | ratio | fp32 weight-read ceiling tok/s "
              "(ORT / HF at % of it) | deploykit int8 tok/s | int8 / HF | tokens identical |")
        print("|---|---|---|---|---|---|---|---|")
        for threads in args.threads:
            rates, tokens = _tokens_per_second(work / "model", work / "bundle", threads, args.repeats, prompt, 128)
            int8, _ = _tokens_per_second(work / "model", work / "int8", threads, 1, prompt, 128)
            ours, theirs, low = (statistics.median(rates["deploykit"]), statistics.median(rates["hf"]),
                                 statistics.median(int8["deploykit"]))
            spread = max(rates["deploykit"]) - min(rates["deploykit"])
            ceiling = _weight_read_ceiling(params, threads)
            print(f"| {threads} | {ours:.1f} (+-{spread / 2:.1f}) | {theirs:.1f} | {ours / theirs:.2f}x | {ceiling:.1f} "
                  f"({100 * ours / ceiling:.0f} % / {100 * theirs / ceiling:.0f} %) | {low:.1f} | {low / theirs:.2f}x | "
                  f"{tokens['deploykit'] == tokens['hf']} |")
        agreement = _top1_agreement(work / "bundle", work / "int8", prompt + tokens["deploykit"])
        print(f"int8 top-1 agreement with fp32 along the 160-token greedy sequence: {agreement:.3f}")


if __name__ == "__main__":
    main()
