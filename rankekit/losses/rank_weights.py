"""Per-rollout weights for the decoder phase of RankE, computed from rewards within each group.

The decoder's rank-weighted terms (GAN on policy decodes, reward backprop) average ``w_i * term_i``
over rollouts. Rollouts are ordered group-major (rows ``g*G .. g*G+G-1`` belong to prompt g).
Weights are constants: no gradient flows through them.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from rankekit.registry import RANK_WEIGHTS

__all__ = ['TopKSoftmaxWeights', 'UniformRankWeights']


def _grouped(rewards: Tensor, group_size, who: str) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f'{who}: rewards must be (N,), got {tuple(rewards.shape)}')
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) \
            or group_size < 1:
        raise ValueError(f'{who}: group_size must be a positive int, got {group_size!r}')
    if len(rewards) % group_size:
        raise ValueError(f'{who}: {len(rewards)} rollouts do not split into groups of '
                         f'group_size={group_size}; N must be B * group_size, ordered group-major')
    # at least fp32 (a float64 run keeps its precision)
    rewards = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    return rewards.view(-1, int(group_size))


@RANK_WEIGHTS.register_module()
class TopKSoftmaxWeights(nn.Module):
    """Top-K softmax rank weights: the self-normalised reward-tilted target of RankE's decoder.

    Per group, keep the ``top_k`` rollouts with the highest reward (ties: lower index first) and

        w_i = softmax(r_topK / tau)_i / mean_topK(softmax(r_topK / tau)) = K * softmax(...)_i

    so the kept weights average 1; the other rollouts get 0. With ``top_k=1`` (the released
    scripts) every kept weight is exactly 1 and tau has no effect: plain best-of-G selection.
    As tau -> inf the kept weights tend to 1; small tau concentrates on the best rollout.

    ``tau`` is a plain attribute: a hook anneals it during training (released: 4 -> 1, cosine,
    over the first 20% of steps).

    Args:
        top_k: rollouts kept per group (1 <= top_k <= group_size, checked at call time).
        tau: softmax temperature (> 0).
        mean_eps: the weights are divided by (their mean over the batch + mean_eps); the release
            adds 1e-8 (a relative difference of top_k x 1e-8), 0 divides by the exact mean.
    """

    info_example = dict(type='TopKSoftmaxWeights', top_k=2, tau=1.0)

    def __init__(self, top_k: int = 1, tau: float = 1.0, mean_eps: float = 0.0):
        super().__init__()
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise ValueError(f'TopKSoftmaxWeights: top_k must be an int >= 1, got {top_k!r}')
        if not (isinstance(mean_eps, numbers.Real) and 0 <= mean_eps < 1e-3):
            raise ValueError(f'TopKSoftmaxWeights: mean_eps must be a small number >= 0 (the '
                             f'release uses 1e-8), got {mean_eps!r}')
        self.top_k, self.tau, self.mean_eps = int(top_k), tau, float(mean_eps)
        self._check_tau()

    def _check_tau(self) -> None:
        if not self.tau > 0:
            raise ValueError(f'TopKSoftmaxWeights: tau must be > 0, got {self.tau}')

    def _top_indices(self, rewards: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
        r = _grouped(rewards, group_size, 'TopKSoftmaxWeights')
        if self.top_k > group_size:
            raise ValueError(f'TopKSoftmaxWeights: top_k={self.top_k} > group_size={group_size}; '
                             f'set top_k <= the number of rollouts per prompt')
        idx = torch.sort(r, dim=1, descending=True, stable=True).indices[:, :self.top_k]
        return r, idx

    @torch.no_grad()
    def select(self, rewards: Tensor, group_size: int) -> Tensor:
        """(N,) bool: True for the rollouts kept (top-K by reward within their group)."""
        r, idx = self._top_indices(rewards, group_size)
        keep = torch.zeros_like(r, dtype=torch.bool).scatter_(1, idx, True)
        return keep.flatten()

    @torch.no_grad()
    def forward(self, rewards: Tensor, group_size: int) -> Tensor:
        """(N,) weights, 0 outside each group's top-K, mean 1 over the kept ones."""
        self._check_tau()
        r, idx = self._top_indices(rewards, group_size)
        kept = torch.softmax(r.gather(1, idx) / self.tau, dim=1)
        if self.mean_eps:  # the release's (mean + eps); each group's softmax has mean 1 / top_k
            kept = kept / (kept.mean() + self.mean_eps)
        else:
            kept = kept * self.top_k
        return torch.zeros_like(r).scatter_(1, idx, kept).flatten()

    def extra_repr(self) -> str:
        return f'top_k={self.top_k}, tau={self.tau}'


@RANK_WEIGHTS.register_module()
class UniformRankWeights(nn.Module):
    """Weight 1 for every rollout (ablation: no ranking in the decoder phase)."""

    info_example = dict(type='UniformRankWeights')

    @torch.no_grad()
    def select(self, rewards: Tensor, group_size: int) -> Tensor:
        """(N,) bool, all True: every rollout is kept."""
        return torch.ones_like(_grouped(rewards, group_size, 'UniformRankWeights'),
                               dtype=torch.bool).flatten()

    @torch.no_grad()
    def forward(self, rewards: Tensor, group_size: int) -> Tensor:
        """(N,) ones."""
        return torch.ones_like(_grouped(rewards, group_size, 'UniformRankWeights')).flatten()
