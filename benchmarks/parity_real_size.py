"""The parity rule at real size: random-init ~124M GPT-2 and Llama-style folders (save_pretrained, nothing
downloaded) at several seeds and initializer ranges (0.3: large activations and logits, as in trained checkpoints;
0.02: a fresh init), each exported through hf:DIR and verified from its golden vectors, in a fresh process.

Per run: whether export passed, how many outputs each rule judged (fixed, fp64, near-tie), the worst fp64 ratio
(max |ort - torch_fp64| / max |torch_fp32 - torch_fp64|; the rule allows 10), the golden verify result and its worst
ratio against the recorded bounds (allowed 1), export wall time and peak RSS.

    python benchmarks/parity_real_size.py [--arch gpt2 llama] [--init 0.3 0.02] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from hf_language_models import save_model
import deploykit
from deploykit.errors import ParityError
from deploykit.sources import resolve
arch, init, seed, _, work = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
save_model(arch, f"{work}/model", seed, init)
start = time.perf_counter()
r = resolve(f"hf:{work}/model")
try:
    bundle = deploykit.export(r.model, r.family, f"{work}/bundle", source=r.source)
except ParityError as exc:
    print(json.dumps({"export": "ParityError", "detail": str(exc).splitlines()[0]}))
    sys.exit(0)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
golden = deploykit.verify(bundle, fresh=False)
print(json.dumps({"export": "ok", "seconds": seconds, "peak_mib": peak, "parity": bundle.manifest["parity"],
                  "verify": golden.passed, "verify_parity": golden.report.summary()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--init", nargs="+", type=float, default=[0.3, 0.02])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent)
    print(f"{'arch':<6} {'init':>5} {'seed':>4}  {'export':<11} {'outputs per rule':<34} {'fp64 worst':>10} "
          f"{'verify':<6} {'recorded worst':>14} {'export s':>8} {'peak MiB':>8}")
    for arch in args.arch:
        for init in args.init:
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as work:
                    run = subprocess.run([sys.executable, "-c", RUN, arch, str(init), str(seed), here, work],
                                         capture_output=True, text=True)
                if run.returncode:
                    print(f"{arch:<6} {init:>5} {seed:>4}  crashed: {run.stderr.strip().splitlines()[-1][:160]}")
                    continue
                res = json.loads(run.stdout.strip().splitlines()[-1])
                if res["export"] != "ok":
                    print(f"{arch:<6} {init:>5} {seed:>4}  {res['export']:<11} {res['detail'][:100]}")
                    continue
                rules = ", ".join(f"{k} {v}" for k, v in sorted(res["parity"]["outputs"].items()))
                worst = res["parity"]["worst_ratio"].get("fp64", 0.0)
                recorded = res["verify_parity"]["worst_ratio"].get("recorded", 0.0)
                print(f"{arch:<6} {init:>5} {seed:>4}  {'ok':<11} {rules:<34} {worst:>10.2f} "
                      f"{str(res['verify']):<6} {recorded:>14.2f} {res['seconds']:>8.0f} {res['peak_mib']:>8.0f}")


if __name__ == "__main__":
    main()
