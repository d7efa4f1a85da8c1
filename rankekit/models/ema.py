"""Exponential moving averages of modules, kept by the model itself (one decay per module)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode (reference and EMA copies)."""
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone.eval()


@torch.no_grad()
def ema_update_(ema: nn.Module, online: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * online, for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    if len(ema_params) != len(online_params):
        raise RuntimeError('EMA copy and online module have different parameter lists')
    floats = [(e, o) for e, o in zip(ema_params, online_params) if e.dtype.is_floating_point]
    if floats:
        torch._foreach_lerp_([e for e, _ in floats], [o for _, o in floats], 1.0 - decay)
    for e, o in zip(ema.buffers(), online.buffers()):
        e.copy_(o)
