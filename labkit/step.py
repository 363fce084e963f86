"""The training step, replayed from a CUDA graph where it can be (the benchmark profiles the same step)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .config import ConfigError, TrainConfig
from .data import normalize
from .model import Dropout


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def prep(x_u8: Tensor, cfg: TrainConfig) -> Tensor:
    x = normalize(x_u8, cfg.norm)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    kw = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **({"fused": True} if device.type == "cuda" else {})}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **kw)
    return torch.optim.SGD(model.parameters(), momentum=cfg.momentum, nesterov=cfg.nesterov, **kw)


def _capture_error(e: BaseException) -> str:
    """Why a capture failed: capture_end()'s generic "operation failed due to a previous error during capture"
    is raised while the failing op's own error (its __context__) is handled, which says what went wrong."""
    text = f"{type(e).__name__}: {e}"
    first = e.__context__
    if first is not None and e.__cause__ is None and not e.__suppress_context__:
        text += f" (while handling {type(first).__name__}: {str(first)[:300]})"
    return text


class Stepper:
    """Forward + backward of one batch, returning the detached loss and logits. On CUDA with cuda_graphs, full
    batches replay a graph captured once (a step's ~400 kernel launches otherwise cost more than the maths at
    batch 512); a partial batch, and every step on the CPU, runs eagerly. The optimiser step runs after this."""

    def __init__(self, model, loss_fn, cfg: TrainConfig, device, amp_dtype, graphable: bool = True,
                 capture_alone=contextlib.nullcontext):
        self.model, self.loss_fn, self.cfg, self.device, self.amp = model, loss_fn, cfg, device, amp_dtype
        self.capture_alone = capture_alone  # runs side by side in threads: no other run's CUDA work during a capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.mode = "eager"
        # Dropout's masks are drawn outside the graph (model.Dropout.redraw): offsets drawn inside failed to replay
        # ("Offset increment outside graph capture", torch 2.11, H200). A compiled net traces Dropout's eager branch,
        # so it is not captured with dropout; nor are DDP runs (graphable False): DDP all-reduces from backward
        # hooks with buckets and streams of its own, and gloo cannot be captured at all.
        self.want_graph = cfg.cuda_graphs and device.type == "cuda" and not (cfg.dropout and cfg.compile) and graphable
        self.dropouts: list[Dropout] = []  # whose masks are redrawn before each replay
        self.graph_error = ""

    def eager(self, x: Tensor, y: Tensor, optimizer) -> tuple[Tensor, Tensor]:
        # After a capture the .grad tensors are the graph's buffers: zeroed in place, never set to None.
        optimizer.zero_grad(set_to_none=self.graph is None)
        with autocast(self.device, self.amp):
            out = self.model(x)
            loss = self.loss_fn(out.float(), y)
        loss.backward()
        return loss.detach(), out.detach()

    def _capture(self, x: Tensor, y: Tensor, optimizer) -> None:
        model = self.model
        saved = {k: v.clone() for k, v in model.state_dict().items()}  # undo warm-up's BN updates
        # ... and the warm-up's dropout draws, so that the graphed run draws the eager run's masks
        dropouts = [m for m in model.modules() if isinstance(m, Dropout) and m.p > 0 and m.generator is not None]
        gens = list({id(m.generator): m.generator for m in dropouts}.values())
        gen_states = [g.get_state() for g in gens]
        for m in dropouts:
            m.static_keep = None
        side = torch.cuda.Stream(self.device)
        prev = torch.cuda.current_stream(self.device)
        try:
            self.static_x, self.static_y = x.clone(), y.clone()
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN picks its algorithms outside the capture
                    optimizer.zero_grad(set_to_none=True)
                    with autocast(self.device, self.amp):
                        loss = self.loss_fn(model(self.static_x).float(), self.static_y)
                    loss.backward()
            torch.cuda.current_stream(self.device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
            g = torch.cuda.CUDAGraph()
            # thread_local: runs trained side by side in threads may launch work meanwhile
            with torch.cuda.graph(g, stream=side, capture_error_mode="thread_local"):
                with autocast(self.device, self.amp):
                    out = model(self.static_x)
                    self.static_loss = self.loss_fn(out.float(), self.static_y)
                self.static_loss.backward()
                self.static_out = out.detach()
            # The graph replays the backward: its autograd nodes would only tie later eager steps' gradient
            # accumulation to `side` ("AccumulateGrad node's stream").
            self.static_loss = self.static_loss.detach()
        finally:  # captured or not, training goes on from the state before the warm-up
            # A capture failing in capture_end() leaves `side` current (torch.cuda.graph leaves its stream context
            # only after capture_end succeeds); then wait for what a failure may have left queued on `side`.
            torch.cuda.set_stream(prev)
            torch.cuda.current_stream(self.device).wait_stream(side)
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(saved[k])
            for gen, state in zip(gens, gen_states, strict=True):
                gen.set_state(state)
        missing = [m for m in dropouts if m.static_keep is None]
        if missing:  # its forward did not see the capture: its mask would be frozen in the graph
            raise RuntimeError(f"{len(missing)} dropout layer(s) allocated no mask buffer during the capture")
        self.dropouts = dropouts
        self.graph, self.mode = g, "cuda_graph"

    def __call__(self, x: Tensor, y: Tensor, optimizer) -> tuple[Tensor, Tensor]:
        full = len(y) == self.cfg.batch_size
        if full and self.want_graph and self.graph is None:
            try:
                with self.capture_alone():
                    self._capture(x, y, optimizer)
            except Exception as e:  # an op that cannot be captured: fall back, say why
                self.want_graph, self.graph, self.graph_error = False, None, _capture_error(e)
                torch.cuda.current_stream(self.device).synchronize()
                optimizer.zero_grad(set_to_none=True)
        if full and self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            for m in self.dropouts:
                m.redraw()
            self.graph.replay()
            return self.static_loss.detach(), self.static_out
        return self.eager(x, y, optimizer)


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of ['auto', 'cpu', 'cuda'], got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use device=auto or cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """What a run records as where it ran: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
