"""Data-parallel wrapper for RankEModel under MMEngine's Runner (``--launcher pytorch``/slurm).

MMEngine's default wrapper (DDP) trains through ``forward(mode='loss')`` and one optimizer.
RankEModel instead runs a whole iteration itself (rollout, policy phase, discriminator and
decoder phases) with three optimizers, and averages each optimizer's gradients over ranks right
after its backward (``RankEModel._safe_update`` -> :func:`rankekit.utils.distributed.
average_gradients_`). So this wrapper does not hook autograd: it makes every rank start from
rank 0's parameters and buffers, runs the module's own ``train_step``, and keeps the BatchNorm
running statistics equal on all ranks afterwards.

With ``shard_policy=True`` the policy and its reference and EMA copies are sharded over the
ranks with torch FSDP2 (``fully_shard``, one unit per transformer block and one for the rest):
each rank keeps 1/world of their weights, gradients and AdamW states, gathering a block's
weights only while it runs. The decoder, discriminator and frozen models stay replicated (they
are small, or frozen). Checkpoints hold full tensors, as unsharded runs write them
(:class:`~rankekit.engine.runner.SafeRunner` gathers them on every rank; loading cuts them back
into shards), so a sharded run resumes or evaluates like any other.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from rankekit.models.rank_e import RankEModel
from rankekit.registry import MODEL_WRAPPERS, MODELS
from rankekit.utils.distributed import (broadcast_module_state_, distribute_like, is_sharded,
                                        sync_batchnorm_buffers_)

#: the policy methods called from outside its forward (FSDP2 gathers around each call)
POLICY_ENTRY_POINTS = ('log_probs', 'sample', 'sampler_log_probs')


def _reshard_after_no_grad_calls(policy: nn.Module, name: str) -> None:
    """FSDP2 keeps the root unit gathered after a forward call (the backward would gather it
    again at once); after a call without gradients no backward comes: shard it again, so that
    the EMA update, state dicts and memory see the sharded parameters."""
    method = getattr(policy, name)

    @functools.wraps(method)
    def call(*args, **kwargs):
        out = method(*args, **kwargs)
        if not torch.is_grad_enabled():
            policy.reshard()
        return out
    setattr(policy, name, call)


def _load_full_into_shards(module, state_dict, prefix, *args):
    """Load pre-hook of a sharded RankEModel: full tensors (a checkpoint) become shards."""
    params = dict(module.named_parameters())
    for key, value in list(state_dict.items()):
        name = key[len(prefix):]
        param = params.get(name)
        if param is not None and is_sharded(param) and not is_sharded(value):
            state_dict[key] = distribute_like(value, param)


def shard_policies_(model: RankEModel) -> None:
    """Shard ``model.policy``, ``policy_ref`` and ``policy_ema`` in place with FSDP2 over all
    ranks (one unit per block of ``policy.blocks``, one for the root)."""
    from mmengine.dist import get_world_size
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    if model.lora_cfg is not None:
        raise ValueError('shard_policy=True with model.lora: LoRA keeps one frozen base and small '
                         'adapters, which data parallel already fits; use one or the other')
    mesh = init_device_mesh(model.policy_steps.device.type, (get_world_size(),))
    for policy in (model.policy, model.policy_ref, model.policy_ema):
        if policy is None:
            continue
        blocks = getattr(policy, 'blocks', None)
        if not blocks:
            raise ValueError(f'shard_policy=True needs the policy to name its transformer blocks '
                             f'(a `blocks` property); {type(policy).__name__} has none')
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(policy, mesh=mesh)
        for name in POLICY_ENTRY_POINTS:
            if hasattr(policy, name):
                register_fsdp_forward_method(policy, name)
                _reshard_after_no_grad_calls(policy, name)
    model._register_load_state_dict_pre_hook(_load_full_into_shards, with_module=True)


@MODEL_WRAPPERS.register_module()
class RankEDataParallel(nn.Module):
    """Data-parallel RankE: rank 0's weights everywhere, the module's own train_step per rank.

    At construction every parameter and buffer (policy, decoder, discriminator, the EMA and
    reference copies, the rollout RNG state, the frozen reward/text models) is broadcast from
    rank 0. Each rank then rolls out its own shard of prompts; gradients are averaged inside the
    module's updates, and skip decisions (non-finite values) are taken by all ranks together, so
    all ranks stay bit-identical. ``val_step``/``test_step``/``forward`` go to the module.

    Args:
        module: the ``RankEModel`` (or a subclass), or its config dict.
        broadcast_from: the rank whose weights every rank starts from.
        shard_policy: shard the policy and its reference / EMA copies with FSDP2 (see the
            module docstring); not with LoRA.
    """

    # a tiny RankEModel; with one process the broadcast is a no-op
    info_example = dict(type='RankEDataParallel', module=RankEModel.info_example)

    def __init__(self, module, broadcast_from: int = 0, shard_policy: bool = False):
        super().__init__()
        if isinstance(module, dict):
            module = MODELS.build(module)
        # only RankEModel averages its gradients over ranks itself: any other model would train
        # each rank on its own and drift apart without an error
        if not isinstance(module, RankEModel):
            raise TypeError(f'RankEDataParallel wraps a RankEModel, got {type(module).__name__}; '
                            'for other models leave model_wrapper_cfg unset (MMEngine then uses '
                            'its DDP wrapper)')
        self.module = module
        broadcast_module_state_(module, src=broadcast_from)
        self.shard_policy = bool(shard_policy)
        if self.shard_policy:
            shard_policies_(module)

    def train_step(self, data, optim_wrapper) -> dict:
        """The module's iteration on this rank's batch; BatchNorm statistics averaged after."""
        logs = self.module.train_step(data, optim_wrapper)
        sync_batchnorm_buffers_(self.module)
        return logs

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
