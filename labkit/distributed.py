"""torch.distributed for labkit: one run over several processes (torchrun), one per GPU.

    torchrun --nproc_per_node 4 -m labkit train --preset modern --data-dir DIR

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` joins
them in a process group (NCCL on GPUs, gloo on CPUs) when there is more than one. Without
torchrun, or with one process, nothing here does anything: world() is 1 and rank() is 0.

The training loop (labkit.train) wraps the model in DistributedDataParallel whenever a
group of more than one process is active; `DistributedBatchNorm2d` is its BatchNorm over
the global batch (torch.nn.SyncBatchNorm runs on CUDA only).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedBatchNorm2d",
    "active",
    "all_reduce_sum",
    "barrier",
    "broadcast_",
    "broadcast_flag",
    "convert_batchnorm",
    "init",
    "is_main",
    "local_rank",
    "rank",
    "shutdown",
    "world",
]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def init(device: str = "auto") -> bool:
    """Join torchrun's process group if WORLD_SIZE > 1; True when a group is active.

    NCCL when CUDA is there and `device` is not "cpu", else gloo. Each process uses the GPU
    cuda:LOCAL_RANK (set here as its current device).
    """
    if active():
        return True
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    # MASTER_ADDR/PORT (or the rendezvous) come from torchrun's environment.
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group of more than one process is running (what the training loop checks)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# Read from the group, not the environment: a process started by a torchrun'd one (a sweep
# worker) inherits WORLD_SIZE but is no rank of anything.
def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if active() else 0


def is_main() -> bool:
    return rank() == 0


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum `t` over all ranks, in place (a no-op with one process); returns `t`."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite `t` on every rank with rank `src`'s value, in place; returns `t`."""
    if active():
        dist.broadcast(t, src)
    return t


def broadcast_flag(flag: bool | None, src: int = 0) -> bool:
    """Rank `src`'s `flag` on every rank (the others pass anything, e.g. None)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=_comm_device())
    dist.broadcast(t, src)
    return bool(t.item())


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of each rank's input is the sum over
    ranks of the output's gradients (torch.distributed.nn's all_reduce, now deprecated)."""

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
    """BatchNorm2d whose training statistics are those of the global batch, across ranks.

    What torch.nn.SyncBatchNorm does, for gloo as well as NCCL (SyncBatchNorm runs on CUDA
    only): one all-reduce of the per-channel sum, sum of squares and count. The all-reduce
    is differentiable, so the backward pass sums the statistics' gradients over ranks too.
    Running statistics are updated as BatchNorm2d does (unbiased variance), from the global
    batch; a rank whose slice of the batch is empty still takes part. Outside training, or
    without a process group, it is a plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and active()):
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
    """Every nn.BatchNorm2d in `module` replaced, in place, by a DistributedBatchNorm2d with
    the same parameters and buffers (same state_dict keys: checkpoints move freely between
    single-process and distributed runs). Returns `module`."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistributedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            state = list(child.state_dict().values())
            if state:
                new.to(state[0].device)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module
