"""Memory savers shared by the policies and RankEModel: activation checkpointing, autocast.

Each is off by default and then changes nothing: the plain modules run as before, bit for bit.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: ``model.precision`` -> autocast dtype (None: no autocast, every module in its own dtype)
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16}


@contextmanager
def recompute_in_backward(blocks: Iterable[nn.Module], enabled: bool = True):
    """Activation checkpointing of ``blocks`` for the calls made inside the context.

    Each block keeps only its inputs for the backward pass and runs its forward again there
    (non-reentrant ``torch.utils.checkpoint``, which restores the RNG state, so dropout masks are
    replayed). Only while gradients are enabled; the blocks are patched per instance for the
    duration of the context (module hooks, e.g. FSDP's, stay outside the recomputed part), and
    their class's ``forward`` is back afterwards.
    """
    blocks = list(blocks) if enabled and torch.is_grad_enabled() else []
    patched = []  # (block, its own instance-level forward or None)
    for block in blocks:
        def forward(*args, _forward=block.forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        patched.append((block, block.__dict__.get('forward')))
        block.forward = forward
    try:
        yield
    finally:
        for block, previous in reversed(patched):
            if previous is None:
                del block.forward
            else:
                block.forward = previous


def autocast(device: torch.device | str, precision: str = 'fp32'):
    """``torch.autocast`` to ``precision`` on ``device``'s type; 'fp32' is a no-op context.

    Weights (and so the optimizers' states) stay in their own dtype: autocast runs matmuls and
    convolutions in bf16 on bf16 copies made per call, and gradients reach the fp32 weights.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {tuple(PRECISIONS)}, got {precision!r}')
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def activation_dtype(weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype layer outputs come in: autocast's where it is on for ``device``, else the
    weights' (KV caches are allocated in it: half the bytes under bf16 autocast)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight_dtype


__all__ = ['PRECISIONS', 'recompute_in_backward', 'autocast', 'activation_dtype']
