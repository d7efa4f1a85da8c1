"""Stability anchors: keep the policy or the decoder close to a reference while it is trained.

Every anchor is used the same way by :class:`rankekit.models.RankEModel`::

    penalty = anchor.weight * anchor(online, reference, kind=...)

``kind`` is ``'policy'`` or ``'decoder'``; ``anchor.reference`` says which copy the model compares
with: ``'initial'`` (frozen copy of the weights training started from) or ``'ema'`` (the module's
exponential moving average). What ``online``/``reference`` are depends on ``anchor.uses``:

- ``'outputs'``: per-token log-probs of the sampled tokens, (N, L), for the policy; decoded images
  in [-1, 1], (N, 3, H, W), for the decoder. ``online`` carries the gradient.
- ``'params'``: the online module and the reference module themselves.

``weight`` is a plain attribute so that :class:`rankekit.engine.CoEvolutionHook` can anneal it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from rankekit.registry import ANCHORS

_KINDS = ('policy', 'decoder')
_REFERENCES = ('initial', 'ema')


def kl_estimate(logp: Tensor, logp_ref: Tensor, estimator: str = 'k2',
                mask: Tensor | None = None) -> Tensor:
    """Monte-Carlo estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    With d = logp - logp_ref (per token):
      k1 = d                      (unbiased, high variance, can be negative)
      k2 = d^2 / 2                (biased, low variance; the released RankE anchor)
      k3 = exp(-d) - 1 + d        (unbiased, always >= 0)
    Returns the mean over (valid) tokens.
    """
    d = logp - logp_ref
    if estimator == 'k1':
        per_token = d
    elif estimator == 'k2':
        per_token = 0.5 * d.pow(2)
    elif estimator == 'k3':
        per_token = torch.expm1(-d) + d
    else:
        raise ValueError(f"KL estimator '{estimator}' is unknown; use 'k1', 'k2' or 'k3'")
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


class BaseAnchor(nn.Module):
    """Common part of the anchors: weight, reference choice, argument checks."""

    uses = 'outputs'

    def __init__(self, weight: float = 1.0, reference: str = 'initial'):
        super().__init__()
        if reference not in _REFERENCES:
            raise ValueError(f"anchor reference '{reference}' is unknown; use one of {_REFERENCES}")
        self.weight = float(weight)
        self.reference = reference

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"anchor kind must be 'policy' or 'decoder', got '{kind}'")

    def extra_repr(self) -> str:
        return f'weight={self.weight}, reference={self.reference!r}'


@ANCHORS.register_module()
class KLAnchor(BaseAnchor):
    """KL anchor to the frozen initial (or EMA) model.

    Policy: KL(pi_theta || pi_ref) estimated on the sampled tokens with ``estimator`` k1 / k2 / k3
    (see :func:`kl_estimate`); released RankE: k2, weight 0.05, frozen initial reference.
    Decoder: each decoded image is read as the mean of an isotropic Gaussian with std ``sigma``,
    so KL(N(x, s^2) || N(x_ref, s^2)) = ||x - x_ref||^2 / (2 s^2), averaged over pixels.
    """

    info_example = dict(type='KLAnchor', weight=0.05, estimator='k2', reference='initial')

    def __init__(self, weight: float = 0.05, estimator: str = 'k2', reference: str = 'initial',
                 sigma: float = 1.0):
        super().__init__(weight, reference)
        if estimator not in ('k1', 'k2', 'k3'):
            raise ValueError(f"KL estimator '{estimator}' is unknown; use 'k1', 'k2' or 'k3'")
        self.estimator = estimator
        self.sigma = float(sigma)

    def forward(self, online: Tensor, reference: Tensor, kind: str = 'policy',
                mask: Tensor | None = None, **_) -> Tensor:
        self._check_kind(kind)
        if kind == 'policy':
            return kl_estimate(online, reference.detach(), self.estimator, mask)
        return (online - reference.detach()).pow(2).mean() / (2 * self.sigma ** 2)


@ANCHORS.register_module()
class EMAAnchor(BaseAnchor):
    """Consistency with the module's EMA teacher.

    Decoder: ``distance`` between the online decode and the EMA decoder's decode of the same
    policy tokens — a perceptual distance (the model passes its perceptual loss; released RankE:
    LPIPS, weight 10 for LlamaGen, 5 for Janus) or ``'mse'``.
    Policy: KL(pi_theta || pi_ema) on the sampled tokens with ``estimator`` (k3 by default).
    """

    info_example = dict(type='EMAAnchor', weight=10.0)

    def __init__(self, weight: float = 10.0, distance: str = 'perceptual', estimator: str = 'k3'):
        super().__init__(weight, reference='ema')
        if distance not in ('perceptual', 'mse', 'l1'):
            raise ValueError(f"EMAAnchor distance '{distance}' is unknown; use 'perceptual', "
                             "'mse' or 'l1'")
        self.distance = distance
        self.estimator = estimator

    def forward(self, online: Tensor, reference: Tensor, kind: str = 'decoder',
                mask: Tensor | None = None, perceptual: Callable | None = None, **_) -> Tensor:
        self._check_kind(kind)
        reference = reference.detach()
        if kind == 'policy':
            return kl_estimate(online, reference, self.estimator, mask)
        if self.distance == 'mse':
            return (online - reference).pow(2).mean()
        if self.distance == 'l1':
            return (online - reference).abs().mean()
        if perceptual is None:
            raise ValueError("EMAAnchor(distance='perceptual') on the decoder needs the model's "
                             "perceptual loss; set model.perceptual_loss or use distance='mse'")
        return perceptual(online, reference).mean()

    def extra_repr(self) -> str:
        return f'weight={self.weight}, distance={self.distance!r}'


@ANCHORS.register_module()
class L2Anchor(BaseAnchor):
    """Squared distance of the trainable parameters to their initial values (EWC when Fisher).

    penalty = mean_i F_i (theta_i - theta0_i)^2 over all trainable parameter elements, with
    F = 1 (plain L2-SP) or, when ``fisher=True``, the diagonal Fisher information estimated as
    the running mean of squared gradients over the first ``fisher_steps`` updates of this module
    and normalised to mean 1 (so ``weight`` keeps its scale).
    """

    uses = 'params'
    info_example = dict(type='L2Anchor', weight=1.0)

    def __init__(self, weight: float = 1.0, reference: str = 'initial', fisher: bool = False,
                 fisher_steps: int = 10):
        super().__init__(weight, reference)
        self.fisher = bool(fisher)
        self.fisher_steps = int(fisher_steps)
        self.register_buffer('fisher_count', torch.zeros((), dtype=torch.long))
        # one buffer per trainable parameter of the anchored module, created by bind()
        self.fisher_state = nn.Module()

    @staticmethod
    def _trainable(module: nn.Module):
        return [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    @staticmethod
    def _key(name: str) -> str:
        return name.replace('.', '__')

    def bind(self, module: nn.Module) -> None:
        """Create the Fisher buffers for ``module`` (so that checkpoints hold the estimate)."""
        if not self.fisher:
            return
        for name, param in self._trainable(module):
            self.fisher_state.register_buffer(self._key(name), torch.zeros_like(param))

    def observe_gradients(self, module: nn.Module) -> None:
        """Accumulate squared gradients into the Fisher estimate (first ``fisher_steps`` calls)."""
        if not self.fisher or int(self.fisher_count) >= self.fisher_steps:
            return
        count = int(self.fisher_count)
        for name, param in self._trainable(module):
            fisher = getattr(self.fisher_state, self._key(name), None)
            if fisher is None:
                raise RuntimeError('L2Anchor(fisher=True) was not bound to the module it '
                                   'anchors: call anchor.bind(module) once after building')
            if param.grad is not None:  # running mean of squared gradients
                fisher.add_((param.grad.detach().pow(2) - fisher) / (count + 1))
        self.fisher_count += 1

    def _fisher_weights(self) -> dict[str, Tensor]:
        buffers = dict(self.fisher_state.named_buffers())
        if not buffers or int(self.fisher_count) == 0:
            return {}
        total = sum(f.sum() for f in buffers.values())
        numel = sum(f.numel() for f in buffers.values())
        mean = (total / numel).clamp_min(1e-30)
        return {k.replace('__', '.'): f / mean for k, f in buffers.items()}

    def forward(self, online: nn.Module, reference: nn.Module, kind: str = 'policy', **_) -> Tensor:
        self._check_kind(kind)
        ref_params = dict(reference.named_parameters())
        weights = self._fisher_weights() if self.fisher else {}
        total, count = None, 0
        for name, param in self._trainable(online):
            if name not in ref_params:
                raise KeyError(f"L2Anchor: reference module has no parameter '{name}'")
            sq = (param - ref_params[name].detach()).pow(2)
            if name in weights:
                sq = sq * weights[name]
            total = sq.sum() if total is None else total + sq.sum()
            count += param.numel()
        if total is None:
            raise ValueError(f'L2Anchor on the {kind}: the module has no trainable parameters')
        return total / count

    def extra_repr(self) -> str:
        return f'weight={self.weight}, reference={self.reference!r}, fisher={self.fisher}'
