"""`llmserve bench` on a plain install: statistics without numpy (the same figures as
numpy's), plots skipped with a clear line when numpy or matplotlib is missing."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from llmserve.bench.loadgen.stats import distribution


@pytest.mark.parametrize("size", [1, 2, 7, 100, 1001])
def test_distribution_matches_numpy(size: int) -> None:
    rng = random.Random(size)
    values = [rng.expovariate(10.0) for _ in range(size)]
    ours = distribution("ttft", values, (50.0, 90.0, 99.0, 99.9))
    data = np.asarray(values) * 1000.0
    expected = {"mean_ttft_ms": np.mean(data), "median_ttft_ms": np.median(data),
                "std_ttft_ms": np.std(data), "p50_ttft_ms": np.percentile(data, 50),
                "p90_ttft_ms": np.percentile(data, 90), "p99_ttft_ms": np.percentile(data, 99),
                "p99.9_ttft_ms": np.percentile(data, 99.9)}
    assert ours == pytest.approx(expected)


def test_no_values_give_zeros() -> None:
    assert set(distribution("itl", []).values()) == {0.0}


def without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing ``modules`` fails."""
    block = "import sys; " + "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    return subprocess.run([sys.executable, "-c", f"{block}; {code}"], capture_output=True,
                          text=True, timeout=60)


def test_the_load_generator_imports_without_numpy_or_matplotlib() -> None:
    result = without(["numpy", "matplotlib"],
                     "import llmserve.bench.cli, llmserve.bench.loadgen.stats, "
                     "llmserve.bench.loadgen.report, llmserve.bench.loadgen.runner; print('ok')")
    assert result.stdout.strip() == "ok", result.stderr


def test_plots_are_skipped_with_a_clear_line_without_matplotlib() -> None:
    result = without(["matplotlib"], "from llmserve.bench.cli import write_plots; "
                                     "from pathlib import Path; "
                                     "print(write_plots({}, Path('.'), 'x'))")
    assert "plots skipped: matplotlib is not installed" in result.stdout, result.stderr
    assert "pip install 'llmserve[bench]'" in result.stdout
