"""One run over several processes under torchrun (DistributedDataParallel), one per GPU.

    torchrun --nproc_per_node 4 -m labkit train --preset modern --data-dir DIR

Every rank draws the global batch as one process would and trains on its slice, so the run
computes what one process would (up to rounding) under the same id. Rank 0 asks the run store
and writes every file; the others train beside it (`get`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, TrainConfig


def init(device: str = "auto") -> Group | None:
    """Join torchrun's process group if WORLD_SIZE > 1 (NCCL with CUDA unless `device` is
    "cpu", else gloo; each process on GPU LOCAL_RANK); its Group, or None without one."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return None
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")  # address from torchrun's environment
    return Group()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GlobalMeanLoss(nn.Module):
    """This rank's summed loss times world / global batch: DDP averages gradients over ranks, so theirs
    is the gradient of the global batch's mean loss, also when a batch splits unevenly (or leaves a rank nothing)."""

    def __init__(self, label_smoothing: float, world: int) -> None:
        super().__init__()
        self.label_smoothing, self.world = label_smoothing, world
        self.global_batch = 1  # set before each step

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(out, y, label_smoothing=self.label_smoothing, reduction="sum")
        return loss * (self.world / self.global_batch)


class Group:
    """The process group as the training loop sees it (labkit.train.Hooks.group)."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.loss: _GlobalMeanLoss | None = None

    def _device(self) -> torch.device:  # NCCL moves CUDA tensors only, gloo CPU ones
        nccl = dist.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def device(self, cfg: TrainConfig, device: torch.device) -> torch.device:
        if cfg.batch_size % self.world:
            raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must divide evenly over "
                              f"{self.world} processes")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device.type == "cuda" else device

    def wrap(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """The network to train and its loss: BatchNorm over the global batch (sync_bn), DDP."""
        if cfg.sync_bn:
            convert_batchnorm(model)
        # forward_sync_buffers off: with sync_bn the BatchNorm buffers are equal on every rank;
        # per-rank ones are made rank 0's before each evaluation (sync_buffers).
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      forward_sync_buffers=False)
        self.loss = _GlobalMeanLoss(cfg.label_smoothing, self.world)
        return net, self.loss

    def slice(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's contiguous slice of the global batch every rank drew."""
        self.loss.global_batch = len(yb)
        lo, hi = len(yb) * self.rank // self.world, len(yb) * (self.rank + 1) // self.world
        return xb[lo:hi], yb[lo:hi]

    def sum(self, t: Tensor) -> Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sync_buffers(self, modules: list[nn.Module | None]) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank: every rank
        evaluates with rank 0's model, whose numbers are recorded."""
        for m in modules:
            for b in m.buffers() if m is not None else ():
                dist.broadcast(b, 0)

    def flag(self, value: bool | None) -> bool:
        """Rank 0's `value` on every rank (the others pass None)."""
        t = torch.tensor([1 if value else 0], device=self._device())
        dist.broadcast(t, 0)
        return bool(t.item())


def get(store, group: Group, cfg: TrainConfig, name: str, data, checkpoint_every: int = 1, **kw):
    """RunStore.get for every rank: rank 0 asks the store and says whether the run trains; the others
    then train beside it (resuming from the checkpoint rank 0 checked) and read the run rank 0 wrote."""
    from ..train import Hooks, train

    hooks = Hooks(group=group)
    if group.rank == 0:
        trains = []
        run = store.get(cfg, name, data, checkpoint_every=checkpoint_every, hooks=hooks,
                        on_train=lambda: trains.append(group.flag(True)), **kw)
        if not trains:
            group.flag(False)  # finished already
        else:
            dist.barrier()  # the others read the run once it is written
        return run
    if group.flag(None):
        init_state = store._parent_weights(cfg) if cfg.init_from else None
        train(cfg, data() if callable(data) else data, run_dir=store.path(store.run_id(cfg, name)),
              init_state=init_state, checkpoint_every=checkpoint_every, progress=False, log=None, hooks=hooks,
              on_epoch=kw.get("on_epoch"))
        dist.barrier()
    return store.load(store.run_id(cfg, name))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable (torch.distributed.nn's all_reduce, now deprecated)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch across ranks: torch.nn.SyncBatchNorm for gloo too (that one is
    CUDA only), with one differentiable all-reduce of the per-channel sum, sum of squares and count. A
    rank with an empty slice still takes part; outside training or a process group, plain BatchNorm2d."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        # Sums of x - shift, with the running mean (equal on every rank) as the shift: the
        # variance as E[d^2] - E[d]^2 then cancels far less than with raw sums.
        shift = self.running_mean.detach().float() if self.track_running_stats else torch.zeros(c, device=x.device)
        xf = x.float()  # fp32 statistics even under autocast, as BatchNorm
        d = xf - shift[None, :, None, None]
        count = torch.full((1,), d.numel() // c, dtype=torch.float32, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([d.sum((0, 2, 3)), (d * d).sum((0, 2, 3)), count]))
        n = stats[2 * c]
        mean_d = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean_d * mean_d).clamp_min(0)  # biased: what normalises
        mean = shift + mean_d
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.copy_(m * mean + (1 - m) * self.running_mean)
                self.running_var.copy_(m * unbiased + (1 - m) * self.running_var)
        scale = torch.rsqrt(var + self.eps)
        bias = -mean * scale
        if self.affine:
            scale, bias = scale * self.weight, bias * self.weight + self.bias
        return (xf * scale[None, :, None, None] + bias[None, :, None, None]).to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Every nn.BatchNorm2d in `module` made a DistributedBatchNorm2d, in place: the same parameters and
    buffers (checkpoints move freely between single-process and distributed runs). Returns `module`."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = DistributedBatchNorm2d  # only forward differs
    return module
