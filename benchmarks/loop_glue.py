"""How much of a host loop is deploykit's own code: loop wall time against the time spent inside onnxruntime's
InferenceSession.run, both measured in the same process on the same calls.

    python benchmarks/loop_glue.py [--out bundles/bench] [--rounds 15] [--quick]

Loops (ORT-CPU, one thread), each on the host (one graph call per step) and in the graph (the default): the zoo
`gpt` generating 128 tokens at batch 1 (top-p), DDIM-50 on the zoo DDPM (n = 1) conditional-only (w = 1) and
guided (w = 3), and the MAF's inversion (n = 1).
Each round runs every loop once, in alternating order; glue = (loop time - session time) / loop time, median and
p10-p90 over the rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from timing import ONE_THREAD, arguments, interleaved, spread, zoo_bundle

BLOCK_S = 0.02

import deploykit
from deploykit.runtimes.tokens import mode_config


class SessionClock:
    """Wraps every runner's InferenceSession.run to add up the time spent inside it."""

    def __init__(self, dep: deploykit.Deployment) -> None:
        self.total = 0.0
        for runner in dep.runners.values():
            session = runner.session
            run = session.run

            def timed(*args: Any, _run: Callable[..., Any] = run, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _run(*args, **kwargs)
                finally:
                    self.total += time.perf_counter() - start

            session.run = timed


def main() -> None:
    args, rounds = arguments(__doc__, 15, 3, "")
    deps = {name: deploykit.load(zoo_bundle(name, args.out).path, options=ONE_THREAD).__enter__()
            for name in ("gpt", "ddpm-digits", "maf-moons")}
    clocks = {name: SessionClock(dep) for name, dep in deps.items()}
    gpt, ddpm, maf = deps["gpt"], deps["ddpm-digits"], deps["maf-moons"]
    prompt = gpt.codec().encode("Beautiful is")
    config = mode_config("top-p", 128)
    loops: dict[str, tuple[str, Callable[[], Any]]] = {}
    for where, host in (("host", True), ("in graph", False)):
        loops |= {
            f"gpt 128 tokens b=1, {where}": ("gpt", lambda h=host: gpt.generate_ids([prompt], config, seed=1, host=h)),
            **{f"DDIM-50 n=1 w={w:g}, {where}": ("ddpm-digits", lambda h=host, w=w: ddpm.sample(1, 0, ddpm.options(
                steps=50, scheduler="ddim", guidance=w, host=h))) for w in (1.0, 3.0)},
            f"MAF inversion n=1, {where}": ("maf-moons", lambda h=host: maf.sample(1, 0, maf.options(host=h))),
        }
    repeats = {}  # calls per round: a round of each loop lasts at least BLOCK_S, so sub-ms loops are not timer noise
    for name, (_, run) in loops.items():
        run()  # warm up
        start = time.perf_counter()
        run()
        repeats[name] = max(1, int(BLOCK_S / (time.perf_counter() - start)))

    def measured(name: str) -> Callable[[], Any]:
        bundle, run = loops[name]

        def reset_then_run() -> Any:
            clocks[bundle].total = 0.0
            for _ in range(repeats[name]):
                run()
        return reset_then_run

    glue: dict[str, list[float]] = {name: [] for name in loops}
    walls, _ = interleaved({name: measured(name) for name in loops}, rounds,
                           after=lambda name, wall: glue[name].append((wall - clocks[loops[name][0]].total) / wall))
    print(f"ORT-CPU, 1 thread, {rounds} interleaved rounds (each loop run back to back for >= {BLOCK_S * 1e3:.0f} ms per "
          "round), median (p10-p90)")
    print(f"{'loop':<32} {'calls/round':>11} {'wall ms per call':>22} {'glue %':>20}")
    for name in loops:
        per_call = [w / repeats[name] for w in walls[name]]
        print(f"{name:<32} {repeats[name]:>11} {spread(per_call, fmt='.2f'):>22} {spread(glue[name], 100):>20}")
    for dep in deps.values():
        dep.__exit__(None, None, None)


if __name__ == "__main__":
    main()
