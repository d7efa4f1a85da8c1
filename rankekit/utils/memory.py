"""Memory savers shared by the policies and RankEModel.

Each is off by default and then changes nothing: the plain modules run as before, bit for bit.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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


__all__ = ['recompute_in_backward']
