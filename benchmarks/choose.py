"""What a `labkit sweep` takes from a benchmark result (`python -m benchmarks.bench --sweep-options B`):
runs side by side (lanes), torch.compile, or neither, and the rate a lane trains at."""

from __future__ import annotations

import json
import math
from pathlib import Path

from labkit.config import ConfigError


def execution_from_bench(bench: dict, epochs: int = 30, min_gain: float = 1.1) -> dict:
    """Lanes and compile mode for sweeping `epochs`-epoch runs, from a `python -m benchmarks.bench` result: {"lanes", "compile",
    "rate_gflops" (one lane's), "why"}. k lanes (its lanes probe) or one compiled lane (extra warm-up spread over
    `epochs`) win if they gain `min_gain` over one plain lane; never both, as the probe ran uncompiled."""
    try:
        n, gflop, plain = bench["train_images_per_epoch"], bench["train_gflop_per_image"], bench["labkit"]
        plain_s, plain_first = plain["steady_epoch_seconds"], plain["epoch_seconds"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"not a `python -m benchmarks.bench` result: missing {e}") from None
    for key, v in (("train_images_per_epoch", n), ("train_gflop_per_image", gflop),
                   ("labkit.steady_epoch_seconds", plain_s), ("labkit.epoch_seconds[0]", plain_first)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ConfigError(f"not a `python -m benchmarks.bench` result: {key} must be a positive number, got {v!r}")
    options = []  # (gain over one plain lane, lanes, compile mode, images/s of one lane, why)
    probes = {p["lanes"]: p["total_images_per_s"] for p in bench.get("lanes", [])
              if "error" not in p and "total_images_per_s" in p}
    for k, total in probes.items():
        if k > 1 and 1 in probes:
            gain = total / probes[1]
            why = f"{k} lanes: {gain:.2f}x one lane (bench lanes probe)"
            options.append((gain, k, "", n / plain_s * gain / k, why))
    c = bench.get("labkit_compiled")
    if c and "error" not in c and c.get("step_mode") == plain.get("step_mode"):  # compiled, and graphed alike
        warmup = max(0.0, (c["epoch_seconds"][0] - c["steady_epoch_seconds"]) - (plain_first - plain_s))
        gain = plain_s / (c["steady_epoch_seconds"] + warmup / epochs)
        why = f"compile {c['compile']}: {gain:.2f}x one lane over {epochs} epochs ({warmup:.0f}s extra warm-up a run)"
        options.append((gain, 1, c["compile"], n / c["steady_epoch_seconds"], why))
    one_lane = (1.0, 1, "", n / plain_s, "one lane, no compile")
    best = max(options, key=lambda o: o[0], default=one_lane)
    if best[0] < min_gain:
        why = f"best option gains only {best[0]:.2f}x ({best[4]})" if options else "nothing measured beats it"
        best = (*one_lane[:4], f"one lane, no compile: {why}")
    _, lanes, mode, images_per_s, why = best
    return {"lanes": lanes, "compile": mode, "rate_gflops": images_per_s * gflop, "why": why}


def sweep_options(bench_json: str) -> tuple[list[str], str]:
    """The `labkit sweep` options a benchmark result chooses (--lanes, --compile, --rate-guess), and why."""
    try:
        bench = json.loads(Path(bench_json).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{bench_json}: cannot read it ({e})") from None
    e = execution_from_bench(bench)
    opts = ["--lanes", str(e["lanes"]), "--rate-guess", f"{e['rate_gflops']:.1f}"]
    return opts + (["--compile", e["compile"]] if e["compile"] else []), e["why"]
