"""Slow: parity on many fresh seeds, large batches and larger/odd spatial sizes (`make test-slow`)."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest

import deploykit
from deploykit.backends import make_runners
from deploykit.models import ZOO
from deploykit.parity import ParityReport
from deploykit.sources import torch_reference

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(ZOO))
def test_parity_over_seeds_and_shapes(name: str, zoo_bundle) -> None:
    bundle = zoo_bundle(name)
    spatial = "height" in bundle.check_shapes[0]  # fcn, cyclegan and image flows: one export, many sizes
    shapes = [{"batch": 32}] + ([{"batch": 3, "height": 64, "width": 40}, {"batch": 1, "height": 12, "width": 28}]
                                if spatial else [])
    if "time" in bundle.check_shapes[0]:  # long sequences: rounding must not grow along time
        shapes += [{"batch": 4, "time": 2000}]
    if "src_time" in bundle.check_shapes[0]:
        shapes += [{"batch": 8, "src_time": 120}]
    if "past" in bundle.check_shapes[0]:  # decode after a long cache
        shapes += [{"batch": 4, "seq": 1, "past": 600, "total": 601}]
    report = ParityReport()
    ort_runners, torch_runners = make_runners(bundle, "ort-cpu"), make_runners(bundle, "torch", modules=torch_reference(bundle))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        for role, ort_runner in ort_runners.items():
            with ort_runner, torch_runners[role] as ref:
                for dims in [bundle.check_shapes[0] | d for d in shapes]:
                    inputs = ort_runner.spec.random_inputs(rng, dims)
                    report.add(f"{role} {dims} seed {seed}", ref.infer(inputs), ort_runner.infer(inputs), bundle.tolerance)
    print(f"{name}: worst max abs {max(r.max_abs for r in report.rows):.2e}")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_many_samples_match(name: str, zoo_bundle) -> None:
    with deploykit.load(zoo_bundle(name).path) as a, deploykit.load(zoo_bundle(name).path, "torch") as b:
        np.testing.assert_allclose(a.sample(1000, seed=9), b.sample(1000, seed=9), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name", ["lstm-denoiser", "char-lm", "seq2seq", "vrnn", "dcgan", "gpt", "transformer-seq2seq", "fvsbn", "nade", "made", "pixelcnn", "wavenet",
             "nice-moons", "realnvp-rings", "maf-moons", "iaf-moons", "realnvp-digits", "glow-digits"]
)
def test_sampling_loops_over_seeds(name: str, zoo_bundle) -> None:
    """The stored loop check (streams, tokens per sampling mode, greedy + beam, trajectories, images, audio, flow
    samples and host loops) on 5 more seeds."""
    from deploykit.runtimes.kinds import kind_of

    bundle = zoo_bundle(name)
    check = kind_of(bundle.loop).check
    ort_runners, torch_runners = make_runners(bundle, "ort-cpu"), make_runners(bundle, "torch", modules=torch_reference(bundle))
    report = ParityReport()
    with ExitStack() as stack:
        for runner in (*ort_runners.values(), *torch_runners.values()):
            stack.enter_context(runner)
        for seed in range(1, 6):
            expected, actual = check(torch_runners, bundle.loop, seed), check(ort_runners, bundle.loop, seed)
            report.add(f"loop seed {seed}", expected, actual, bundle.tolerance)
    print(f"{name}: worst max abs {max(r.max_abs for r in report.rows):.2e}")
    assert report.passed, report.table()
