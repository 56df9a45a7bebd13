"""A real-size encoder-decoder through hf:DIR beside the peers: a BART-base-shaped model (139M parameters, random init
from its config, bart-base's generation settings: beam 4, no-repeat trigrams, forced BOS / EOS, early stopping;
saved with save_pretrained beside a byte-level BPE tokenizer; nothing downloaded).

Builds, each in a fresh process (CPU-seconds of the process and its children, peak RSS): `deploykit export hf:DIR`
and optimum-onnx's `optimum-cli export onnx --task text2text-generation-with-past` (in its own environment:
`make peers-env`). Then beam-4 decoding of a 32-token source to 64 new tokens at one thread, deploykit's bundle
(torch-free, onnxruntime) against transformers' `generate` in torch eager, rounds interleaved (the order reversed
every other round): generated tokens/s, median and spread, and whether the tokens are equal.

    python benchmarks/hf_seq2seq.py [--threads 1] [--repeats 3] [--peers .venv-peers/bin/python]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hf_language_models import ROOT, Failed, _save_tokenizer, _size, _timed_build

SOURCE, NEW = [0, *[(7 * i + 3) % 300 + 10 for i in range(30)], 2], 64


def save_bart(folder: Path) -> int:
    """BART-base's shape and generation settings, random init, max_length 1 + NEW; its parameter count."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024))
    settings = {"num_beams": 4, "no_repeat_ngram_size": 3, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
                "early_stopping": True, "max_length": 1 + NEW}
    for key, value in settings.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder)
    _save_tokenizer(folder)
    return sum(p.numel() for p in model.parameters())


def _decode(folder: Path, bundle: Path, threads: int, repeats: int) -> dict[str, list[float]]:
    """Generated tokens/s of each engine per round, rounds interleaved, after a warm-up each; the tokens must agree."""
    import numpy as np
    import torch
    import transformers

    import deploykit
    from deploykit.backends import RunnerOptions

    torch.set_num_threads(threads)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    source = torch.tensor([SOURCE])

    def hf() -> list[int]:
        with torch.no_grad():
            return model.generate(input_ids=source, attention_mask=torch.ones_like(source), num_beams=4)[0, 1:].tolist()

    with deploykit.load(bundle, options=RunnerOptions(threads=threads)) as dep:
        engines = {"transformers generate": hf,
                   "deploykit": lambda: dep.translate_ids([np.asarray(SOURCE)], 4)[0].tolist()}
        tokens = {name: run() for name, run in engines.items()}  # warm-up, and the outputs compared
        want = tokens["transformers generate"]
        want = want[: want.index(2) + 1] if 2 in want else want
        print(f"deploykit beam-4 tokens equal transformers': {tokens['deploykit'] == want} ({len(want)} tokens)")
        rates: dict[str, list[float]] = {name: [] for name in engines}
        for round_ in range(repeats):
            for name in list(engines)[:: 1 if round_ % 2 else -1]:
                start = time.perf_counter()
                count = len(engines[name]())
                rates[name].append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                        help="python of the environment with optimum-onnx (make peers-env)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hf-bart-") as tmp:  # removed after: the builds take gigabytes
        work = Path(tmp)
        params = save_bart(work / "model")
        print(f"## BART-base shape: {params / 1e6:.1f}M parameters, {params * 4 / 2**20:.0f} MiB fp32 weights")
        env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        builds = {"deploykit": (sys.executable, ["-m", "deploykit", "export", f"hf:{work / 'model'}", "--out",
                                                 str(work / "deploykit")])}
        if Path(args.peers).exists():
            builds["optimum-onnx"] = (args.peers, ["-m", "optimum.commands.optimum_cli", "export", "onnx", "--model",
                                                   str(work / "model"), "--task", "text2text-generation-with-past",
                                                   str(work / "optimum")])
        else:
            print(f"{args.peers} not found (`make peers-env`): optimum-onnx left out")
        print("\n| build | CPU-s | peak RSS MiB | size MiB |\n|---|---|---|---|")
        for name, (python, command) in builds.items():
            try:
                cpu, peak = _timed_build(python, command, env)
            except Failed as exc:
                print(f"| {name} | failed: {exc} | | |")
                continue
            print(f"| {name} | {cpu:.0f} | {peak:.0f} | {_size(work / name.split('-')[0]):.0f} |")
        rates = _decode(work / "model", work / "deploykit", args.threads, args.repeats)
        base = statistics.median(rates["transformers generate"])
        print(f"\n| beam 4, {args.threads} thread, {len(SOURCE)}-token source | tokens/s (median, spread) | x transformers |"
              "\n|---|---|---|")
        for name, values in rates.items():
            print(f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) | "
                  f"{statistics.median(values) / base:.2f}x |")

if __name__ == "__main__":
    main()
