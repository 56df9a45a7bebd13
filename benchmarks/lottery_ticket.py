"""The lottery-ticket experiment (Frankle & Carbin 2019, Figure 1-style) on the zoo's digit classifiers: iterative
magnitude pruning, 20 % of the surviving weights of every layer per round, survivors rewound to theta_0 and retrained
by the zoo's own training loop (`deploykit.pruning.lottery_ticket`), against the same masks from a fresh random
initialization and against random masks with the same per-layer counts from theta_0. Test accuracy on the digits'
held-out split (359 images: one image is 0.28 %), mean and range over the trials.

    python benchmarks/lottery_ticket.py [--models mlp cnn] [--rounds 20] [--trials 3] [--plot lottery.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deploykit.pruning import lottery_ticket

VARIANTS = {"ticket": "winning ticket (rewound to theta_0)", "reinit": "same mask, fresh init",
            "random_mask": "random mask, theta_0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=Path("lottery.png"))
    args = parser.parse_args()
    results = {}
    for name in args.models:
        runs = [lottery_ticket(name, args.rounds, trial=t) for t in range(args.trials)]
        remaining = [r.remaining for r in runs[0]]
        curves = {v: np.array([[getattr(r, v) for r in run] for run in runs]) for v in VARIANTS}
        results[name] = (remaining, curves)
        print(f"\n{name}: test accuracy, mean (min-max) over {args.trials} trials\n")
        print("| weights remaining | " + " | ".join(VARIANTS.values()) + " |")
        print("|---|---|---|---|")
        for i, left in enumerate(remaining):
            cells = [f"{c[:, i].mean():.3f} ({c[:, i].min():.3f}-{c[:, i].max():.3f})" for c in curves.values()]
            print(f"| {100 * left:.1f} % | " + " | ".join(cells) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, (remaining, curves)) in zip(axes[0], results.items()):
        x = 100 * np.asarray(remaining)
        for variant, label in VARIANTS.items():
            c = curves[variant]
            ax.plot(x, c.mean(0), "o-", markersize=3, label=label)
            ax.fill_between(x, c.min(0), c.max(0), alpha=0.2)
        ax.set(xscale="log", xlabel="weights remaining (%)", ylabel="test accuracy", title=f"zoo {name}")
        ax.invert_xaxis()
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
