"""Distributed runs under torchrun: the process group, the NCCL environment, agreeing across ranks.

Shared by labelling and training (`muse.studio.label`, `muse.studio.train`) and the CLI
that launches torchrun.
"""

from __future__ import annotations

import os

import torch

# NVLink multicast (NVLS) is off on our machines' drivers; keep NCCL and symmetric memory off it.
DDP_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}



def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world, device); initialises the process group under torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        import torch.distributed as dist

        for k, v in DDP_ENV.items():
            os.environ.setdefault(k, v)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_agree(flag: bool, world: int, dev: torch.device) -> bool:
    """True on every rank if it is true on any (ranks must stop at the same step or DDP hangs)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())  # one sync every log_every steps, only with a time limit
