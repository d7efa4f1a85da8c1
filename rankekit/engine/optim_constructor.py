"""One optimizer per trainable part of a model, as an ``OptimWrapperDict``."""
from __future__ import annotations

import copy

import torch
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from torch import nn

from rankekit.registry import OPTIM_WRAPPER_CONSTRUCTORS
from rankekit.utils.build import did_you_mean
from rankekit.utils.distributed import distribute_like, is_sharded


def optimizable_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The named parts of ``model`` that can get an optimizer of their own.

    A model may define ``optim_parts() -> dict[str, nn.Module]`` (RankEModel does: its ``decoder``
    part is the tokenizer's decoder plus post_quant_conv); otherwise its direct children are used.
    """
    if is_model_wrapper(model):
        model = model.module
    if hasattr(model, 'optim_parts'):
        return dict(model.optim_parts())
    return dict(model.named_children())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MultiOptimWrapperConstructor:
    """Build an ``OptimWrapperDict`` with one optimizer wrapper per named model part.

    Each key of the config names a part (``policy``, ``decoder``, ``discriminator``, ...) and holds
    an ordinary MMEngine optim-wrapper config (``optimizer``, ``clip_grad``, ``type``,
    ``accumulative_counts``, and its own ``paramwise_cfg``)::

        optim_wrapper = dict(
            constructor='MultiOptimWrapperConstructor',
            policy=dict(optimizer=dict(type='AdamW', lr=1e-6, weight_decay=0.01),
                        clip_grad=dict(max_norm=1.0)),
            decoder=dict(optimizer=dict(type='AdamW', lr=1e-5, weight_decay=0.01),
                         clip_grad=dict(max_norm=1.0)))

    A part the model does not have is an error that lists the parts it has. A part of the model
    that is not in the config gets no optimizer (it stays as it is unless something else updates
    it, e.g. an EMA).
    """

    info_example = dict(
        type='MultiOptimWrapperConstructor',
        optim_wrapper_cfg=dict(policy=dict(optimizer=dict(type='AdamW', lr=1e-4))))

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        if not isinstance(optim_wrapper_cfg, dict) or not optim_wrapper_cfg:
            raise ValueError('MultiOptimWrapperConstructor needs one optim-wrapper config per '
                             "model part, e.g. policy=dict(optimizer=dict(type='AdamW', lr=1e-6))")
        if paramwise_cfg is not None:
            raise ValueError('with MultiOptimWrapperConstructor put paramwise_cfg inside each '
                             'part (optim_wrapper.policy.paramwise_cfg), not at the top level')
        for name, cfg in optim_wrapper_cfg.items():
            if not isinstance(cfg, dict) or 'optimizer' not in cfg:
                raise ValueError(f"optim_wrapper.{name} must be a dict with an 'optimizer' key, "
                                 f'got {cfg!r}')
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        parts = optimizable_parts(model)
        wrappers = {}
        for name, cfg in self.optim_wrapper_cfg.items():
            if name not in parts:
                hint = did_you_mean(name, parts, n=1)
                raise KeyError(
                    f"optim_wrapper has a config for '{name}', but {type(model).__name__} has no "
                    f'part of that name; its parts are {sorted(parts)}.{hint}')
            cfg = copy.deepcopy(cfg)
            cfg.setdefault('type', 'OptimWrapper')
            paramwise = cfg.pop('paramwise_cfg', None)
            constructor = DefaultOptimWrapperConstructor(cfg, paramwise)
            wrappers[name] = constructor(parts[name])
            optimizer = wrappers[name].optimizer
            if any(is_sharded(p) for g in optimizer.param_groups for p in g['params']):
                optimizer.register_load_state_dict_pre_hook(_shard_full_states)
        return OptimWrapperDict(**wrappers)


def _shard_full_states(optimizer, state_dict):
    """Load pre-hook of an optimizer over sharded (FSDP2) parameters: checkpoints hold full
    states (SafeRunner gathers them), each rank keeps the shards of its parameters."""
    params = [p for group in optimizer.param_groups for p in group['params']]
    state = {}
    for index, slots in state_dict['state'].items():
        param = params[int(index)]
        state[index] = {k: distribute_like(v, param)
                        if is_sharded(param) and torch.is_tensor(v) and not is_sharded(v)
                        and v.dim() > 0 else v for k, v in slots.items()}
    return {**state_dict, 'state': state}
