"""Collectives for data-parallel RankE training, on top of :mod:`mmengine.dist`.

Every helper is a no-op (or the plain local computation) when the world size is 1, so single-
process runs take exactly the code path they always did. All of them are collectives: every rank
must call them, in the same order.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable

import torch
from mmengine.dist import all_gather, all_reduce, all_reduce_params, broadcast, get_rank, \
    get_world_size
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

#: bytes per broadcast at start-up: big enough to be fast, small enough for a 7B backbone on GPU
BROADCAST_BUCKET_BYTES = 256 * 1024 * 1024


def all_ranks_true(flag: bool, device: torch.device | str = 'cpu') -> bool:
    """True only if ``flag`` is True on every rank (one all-reduce when distributed)."""
    if get_world_size() == 1:
        return bool(flag)
    value = torch.tensor(0.0 if flag else 1.0, device=device)
    all_reduce(value)
    return bool(value.item() == 0.0)


def average_tensors_(tensors: Iterable[Tensor]) -> None:
    """In place: each tensor becomes its mean over ranks (coalesced per dtype)."""
    tensors = list(tensors)
    if get_world_size() > 1 and tensors:
        all_reduce_params(tensors, coalesce=True, op='mean')


def is_sharded(tensor) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2-sharded parameter, its gradient or state)."""
    # DTensor's module is imported only where a process group exists (cheap plain imports)
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        isinstance(tensor, _dtensor())


def _dtensor():
    from torch.distributed.tensor import DTensor
    return DTensor


def local_part(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor; any other tensor as it is (no communication)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def gather_full_(obj):
    """``obj`` (a state dict, nested dicts / lists) with every DTensor replaced by the full
    tensor. A collective when it holds DTensors: every rank must call it, with the same keys."""
    if is_sharded(obj):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return type(obj)((k, gather_full_(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full_(v) for v in obj)
    return obj


def distribute_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` (the same on every rank, e.g. read from a checkpoint) cut into ``like``'s
    shards, with no communication."""
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f'cannot shard a tensor of shape {tuple(full.shape)} like a parameter '
                         f'of shape {tuple(like.shape)}: the checkpoint is of another model')
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh,
                             like.placements, src_data_rank=None)


def average_gradients_(params: Iterable[nn.Parameter]) -> None:
    """In place: every ``.grad`` becomes its mean over ranks, as DDP would leave it.

    A parameter that has a gradient on some rank but none on this one (a branch this rank's batch
    did not reach) gets a zero gradient first, so that all ranks reduce the same list; a parameter
    without a gradient on every rank keeps ``grad=None`` (the optimizer then skips it, as in a
    single process).
    """
    if get_world_size() == 1:
        return
    # sharded (FSDP2) parameters: their gradients are already reduce-scattered means
    params = [p for p in params if p.requires_grad and not is_sharded(p)]
    if not params:
        return
    has_grad = torch.tensor([float(p.grad is not None) for p in params])
    all_reduce(has_grad, op='max')
    for param, anywhere in zip(params, has_grad.tolist()):
        if anywhere and param.grad is None:
            param.grad = torch.zeros_like(param)
    average_tensors_(p.grad for p in params if p.grad is not None)


def broadcast_module_state_(module: nn.Module, src: int = 0,
                            bucket_bytes: int = BROADCAST_BUCKET_BYTES) -> None:
    """Copy every parameter and buffer of rank ``src`` to all ranks (bucketed broadcasts)."""
    if get_world_size() == 1:
        return
    tensors = [t.data for t in (*module.parameters(), *module.buffers())]
    # collectives take numbers: bool buffers travel as bytes (same size, same bits)
    tensors = [t.view(torch.uint8) if t.dtype == torch.bool else t for t in tensors]
    buckets: dict[tuple, list[list[Tensor]]] = {}
    for tensor in tensors:
        chain = buckets.setdefault((tensor.dtype, tensor.device), [[]])
        size = sum(t.numel() * t.element_size() for t in chain[-1])
        if chain[-1] and size + tensor.numel() * tensor.element_size() > bucket_bytes:
            chain.append([])
        chain[-1].append(tensor)
    for chain in buckets.values():
        for bucket in chain:
            flat = _flatten_dense_tensors(bucket)
            broadcast(flat, src)
            for tensor, value in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                tensor.copy_(value)


def rank_rows(local_rows: int, device: torch.device | str = 'cpu') -> tuple[int, int, int]:
    """``(start, stop, total)``: this rank's rows in the global batch, ranks in order.

    The global batch is the concatenation of every rank's rows (rank 0 first); ranks may hold
    different numbers of rows (one all-gather of the sizes).
    """
    if get_world_size() == 1:
        return 0, local_rows, local_rows
    sizes = all_gather(torch.tensor([local_rows], device=device))
    sizes = [int(s.item()) for s in sizes]
    start = sum(sizes[:get_rank()])
    return start, start + local_rows, sum(sizes)


def mean_var_over_ranks(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population variance along dim 1 of ``x`` (K, N), over every rank's columns.

    One process: exactly ``x.mean(1), x.var(1, unbiased=False)``. Distributed: the statistics of
    the concatenated (K, sum N) batch, computed in two passes (sum, then centred squares).
    """
    if get_world_size() == 1:
        return x.mean(1), x.var(1, unbiased=False)
    stats = torch.stack([x.sum(1), torch.full_like(x[:, 0], x.shape[1])])
    all_reduce(stats)
    mean = stats[0] / stats[1]
    squares = (x - mean[:, None]).pow(2).sum(1)
    all_reduce(squares)
    return mean, squares / stats[1]


def sync_batchnorm_buffers_(module: nn.Module) -> None:
    """Average the running statistics of the BatchNorm layers in training mode over ranks.

    Each rank normalises with its own batch statistics (as under DDP without SyncBN); averaging the
    running estimates after every step keeps the buffers identical on all ranks. SyncBatchNorm
    layers are already synchronised and frozen (eval-mode) layers do not change: both are skipped.
    """
    if get_world_size() == 1:
        return
    buffers = [buf for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and not isinstance(m, nn.SyncBatchNorm) and m.training and m.track_running_stats
               for buf in (m.running_mean, m.running_var) if buf is not None]
    average_tensors_(buffers)


def init_cpu_process_group(dist_cfg: dict | None = None) -> bool:
    """Start the default process group with gloo for a ``torchrun`` launch on a machine without
    CUDA (MMEngine's own start-up calls ``torch.cuda.set_device``, which fails there).

    Reads ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set by torchrun. Returns False
    (and does nothing) when CUDA is available or a group already exists.
    """
    import torch.distributed as torch_dist
    if torch.cuda.is_available() or torch_dist.is_initialized():
        return False
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher pytorch: environment variables {missing} are not set; '
                           'start the job with torchrun, e.g. `torchrun --nproc_per_node 2 '
                           'tools/train.py CONFIG --launcher pytorch`')
    kwargs = {k: v for k, v in (dist_cfg or {}).items() if k not in ('backend', 'init_backend')}
    if kwargs.get('timeout') is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    torch_dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                  world_size=int(os.environ['WORLD_SIZE']), **kwargs)
    return True


__all__ = ['is_sharded', 'local_part', 'gather_full_', 'distribute_like', 'all_ranks_true',
           'average_tensors_', 'average_gradients_', 'broadcast_module_state_',
           'rank_rows', 'mean_var_over_ranks', 'sync_batchnorm_buffers_',
           'init_cpu_process_group']
