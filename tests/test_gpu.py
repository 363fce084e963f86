"""Checks that need a CUDA GPU: the graphed step, runs side by side, compile. Skipped without one.

Run them on a GPU machine with `python -m pytest -q -m gpu` (benchmarks/gpu_lab.sh does).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from labkit.runs import RunStore
from labkit.scale.sweep import sweep

T = importlib.import_module("labkit.train")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _cfg(tiny_config, **changes):
    # batch 48 leaves a partial last batch (400 images), so the eager tail step runs too
    return tiny_config(device="cuda", batch_size=48, channels_last=True, **changes)


def test_graphed_step_trains_like_the_eager_step(tiny_data, tiny_config):
    graphed = T.train(_cfg(tiny_config, epochs=2), tiny_data, progress=False, log=None)
    eager = T.train(_cfg(tiny_config, epochs=2, cuda_graphs=False), tiny_data, progress=False, log=None)
    assert graphed.summary["step_mode"] == "cuda_graph", graphed.summary["graph_fallback"]
    assert eager.summary["step_mode"] == "eager"
    # Same data, same seeds; cuDNN may pick other algorithms, so equal up to bf16 rounding.
    for g, e in zip(graphed.history, eager.history, strict=True):
        assert g["loss_sum"] == pytest.approx(e["loss_sum"], rel=0.05)
    assert graphed.history[-1]["loss_sum"] < graphed.history[0]["loss_sum"]


def test_dropout_in_a_graph_draws_the_eager_masks():
    from labkit.model import Dropout

    d = Dropout(0.4).train()
    d.generator = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(64, 512, device="cuda")
    eager = [d(x) for _ in range(3)]
    assert not torch.equal(eager[0], eager[1])
    d.generator.manual_seed(3)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = d(x)
    for want in eager:
        d.redraw()
        graph.replay()
        assert torch.equal(out, want)


def test_dropout_net_is_graphed_and_trains_like_the_eager_one(tiny_data, tiny_config):
    graphed = T.train(_cfg(tiny_config, epochs=2, dropout=0.4), tiny_data, progress=False, log=None)
    eager = T.train(_cfg(tiny_config, epochs=2, dropout=0.4, cuda_graphs=False), tiny_data, progress=False, log=None)
    assert graphed.summary["step_mode"] == "cuda_graph", graphed.summary["graph_fallback"]
    # The same masks (drawn eagerly before each replay); cuDNN may pick other algorithms.
    for g, e in zip(graphed.history, eager.history, strict=True):
        assert g["loss_sum"] == pytest.approx(e["loss_sum"], rel=0.05)
    assert all(math.isfinite(r["loss_sum"]) for r in graphed.history)  # neither NaN nor inf


def test_two_lanes_capture_graphs_side_by_side(tmp_path, tiny_data, tiny_config):
    store = RunStore(tmp_path / "runs")
    jobs = [(f"lane-{i}", _cfg(tiny_config, epochs=2, lr=1e-3 * (i + 1))) for i in range(4)]
    done = sweep(jobs, store, lambda split, val: tiny_data, lanes=2, log=None)
    assert [j.status for j in done] == ["done"] * 4, [j.error for j in done]
    for name, cfg in jobs:
        s = store.find(cfg, name).summary
        assert s["step_mode"] == "cuda_graph", s["graph_fallback"]


def test_compiled_step_is_captured(tiny_data, tiny_config):
    r = T.train(_cfg(tiny_config, epochs=1, compile="default"), tiny_data, progress=False, log=None)
    assert r.summary["compile"] == "default"
    assert r.summary["step_mode"] == "cuda_graph", r.summary["graph_fallback"]


def test_moving_average_beside_the_graphed_step(tiny_data, tiny_config):
    r = T.train(_cfg(tiny_config, epochs=2, ema=0.9), tiny_data, progress=False, log=None)
    plain = T.train(_cfg(tiny_config, epochs=2), tiny_data, progress=False, log=None)
    assert r.summary["step_mode"] == "cuda_graph", r.summary["graph_fallback"]
    for a, b in zip(r.history, plain.history, strict=True):  # the average does not touch training
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=0.05)
    assert r.summary["test_loss"] != plain.summary["test_loss"]
