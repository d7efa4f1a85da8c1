"""LoRA policies for RankE (``model.lora``): low-rank adapters through ``peft``, the reference
policy as the adapter switched off, an EMA of the adapter weights only, merge-and-export.

With LoRA the RankE model keeps ONE copy of the policy's weights: the frozen base with adapters on
its linear layers (``peft.inject_adapter_in_model``: the policy keeps its class, its methods and
its official key names plus ``.base_layer`` / ``.lora_A.default`` / ``.lora_B.default``).

- the reference policy (KL anchor, ``policy='base'`` samples) is the same module with the
  adapters disabled (:func:`adapters_disabled`): no frozen copy (LoRA's B starts at zero, so
  adapter-off is exactly the initial policy);
- the policy EMA (:class:`AdapterEMA`) averages the adapter weights only and is swapped into the
  adapters for the calls that need it;
- runner checkpoints hold the adapter (and its EMA), not the frozen base, which is rebuilt from
  the config's ``pretrained`` file like the other frozen parts;
- :func:`merged_state_dict` folds ``W + scale * B @ A`` into the base weights under the official
  key names, for an official-format checkpoint (``tools/export_checkpoint.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import Tensor, nn

INSTALL_HINT = 'pip install "rankekit[lora]"'
ADAPTER = 'default'  # peft's adapter name
_LORA_KEY = ('.lora_A.', '.lora_B.')


def _require_peft():
    try:
        import peft
    except ImportError as exc:
        raise ImportError(f'model.lora needs the peft package: {INSTALL_HINT}') from exc
    return peft


def _tuner_layers(policy: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer
    return [(name, m) for name, m in policy.named_modules() if isinstance(m, LoraLayer)]


def add_lora(policy: nn.Module, cfg=None, where: str = 'model.lora') -> nn.Module:
    """Inject LoRA adapters into ``policy`` in place; every other parameter is frozen.

    ``cfg``: a :class:`~rankekit.models.settings.LoraCfg` or its dict (r, alpha,
    target_modules; missing keys take the defaults, None takes them all).
    """
    from rankekit.models.settings import LoraCfg
    peft = _require_peft()
    cfg = LoraCfg.from_config(cfg, where.rsplit('.', 1)[0])
    targets = cfg.target_modules or getattr(policy, 'lora_target_modules', None)
    if not targets:
        raise ValueError(f'{where}.target_modules is not set and {type(policy).__name__} names no '
                         f'default lora_target_modules; list the linear layers to adapt')
    config = peft.LoraConfig(r=int(cfg.r), lora_alpha=float(cfg.alpha), lora_dropout=0.0,
                             target_modules=list(targets), bias='none')
    try:
        peft.inject_adapter_in_model(config, policy, adapter_name=ADAPTER)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise ValueError(f'{where}.target_modules={list(targets)}: {exc}') from exc
    return policy


def is_adapter_key(name: str) -> bool:
    return any(part in name for part in _LORA_KEY)


def adapter_parameters(policy: nn.Module) -> 'OrderedDict[str, nn.Parameter]':
    """The LoRA A / B weights of ``policy`` by parameter name (what trains)."""
    return OrderedDict((n, p) for n, p in policy.named_parameters() if is_adapter_key(n))


@contextmanager
def adapters_disabled(policy: nn.Module):
    """Run ``policy`` as its base model: every LoRA layer computes its base layer only."""
    layers = [m for _, m in _tuner_layers(policy)]
    flags = [p.requires_grad for p in policy.parameters()]  # peft's toggle resets them
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield policy
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in zip(policy.parameters(), flags):
            p.requires_grad_(flag)


class AdapterEMA(nn.Module):
    """Exponential moving average of a LoRA policy's adapter weights (buffers, checkpointed).

    Starts equal to the adapters; :meth:`update_` moves it; :meth:`applied` puts it into the
    policy's adapters for the calls made inside (the online values are put back after).
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._names = list(adapter_parameters(policy))
        for name, param in adapter_parameters(policy).items():
            self.register_buffer(self._key(name), param.detach().clone())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace('.', '__')

    def _pairs(self, policy: nn.Module) -> list[tuple[Tensor, nn.Parameter]]:
        params = adapter_parameters(policy)
        if list(params) != self._names:
            raise RuntimeError('the policy adapters do not match the EMA (different LoRA '
                               'target_modules or rank?)')
        return [(getattr(self, self._key(n)), p) for n, p in params.items()]

    @torch.no_grad()
    def update_(self, policy: nn.Module, decay: float) -> None:
        pairs = self._pairs(policy)
        torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], 1.0 - decay)

    @contextmanager
    def applied(self, policy: nn.Module):
        pairs = self._pairs(policy)
        with torch.no_grad():
            online = [p.detach().clone() for _, p in pairs]
            for ema, param in pairs:
                param.copy_(ema)
        try:
            yield policy
        finally:
            with torch.no_grad():
                for (_, param), value in zip(pairs, online):
                    param.copy_(value)


@torch.no_grad()
def merged_state_dict(policy: nn.Module) -> 'OrderedDict[str, Tensor]':
    """The policy's state_dict with every adapter folded in (``W + scale * B @ A``) under the
    official key names (``.base_layer`` dropped, no LoRA keys); a policy without adapters is
    returned as it is."""
    deltas = {}
    for name, layer in _tuner_layers(policy):
        if layer.disable_adapters or layer.merged:
            raise RuntimeError(f'{name}: adapters are disabled or already merged; export from '
                               f'the model as trained')
        deltas[f'{name}.base_layer.weight'] = layer.get_delta_weight(ADAPTER)
    merged = OrderedDict()
    for key, value in policy.state_dict().items():
        if is_adapter_key(key):
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        merged[key.replace('.base_layer.', '.')] = value.detach().clone()
    return merged


__all__ = ['add_lora', 'adapter_parameters', 'adapters_disabled', 'AdapterEMA',
           'merged_state_dict', 'is_adapter_key']
