"""Data-parallel wrapper for RankEModel under MMEngine's Runner (``--launcher pytorch``/slurm).

MMEngine's default wrapper (DDP) trains through ``forward(mode='loss')`` and one optimizer.
RankEModel instead runs a whole iteration itself (rollout, policy phase, discriminator and
decoder phases) with three optimizers, and averages each optimizer's gradients over ranks right
after its backward (``RankEModel._safe_update`` -> :func:`rankekit.utils.distributed.
average_gradients_`). So this wrapper does not hook autograd: it makes every rank start from
rank 0's parameters and buffers, runs the module's own ``train_step``, and keeps the BatchNorm
running statistics equal on all ranks afterwards.
"""
from __future__ import annotations

from torch import nn

from rankekit.models.rank_e import RankEModel
from rankekit.registry import MODEL_WRAPPERS, MODELS
from rankekit.utils.distributed import broadcast_module_state_, sync_batchnorm_buffers_


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
    """

    # a tiny RankEModel; with one process the broadcast is a no-op
    info_example = dict(type='RankEDataParallel', module=RankEModel.info_example)

    def __init__(self, module, broadcast_from: int = 0):
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
