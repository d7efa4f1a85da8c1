"""Ranking objectives for the policy phase of RankE: GRPO, listwise and pairwise.

Every loss sees the same batch: N = B * G rollouts ordered group-major (rows ``g*G .. g*G+G-1``
are the G samples of prompt g), each with L token log-probs. ``forward`` returns
``dict(loss=<scalar with grad>, **metrics)``; metrics are detached scalars that the trainer logs
as ``policy/<name>``. Rewards are treated as constants (detached) by every loss here.

The KL anchor to the reference policy is not part of these losses: it is a separate component
(``ANCHORS``) added by the model. ``logp_ref`` is used here only by losses whose scores are
defined against the reference (``reference='ref'``).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankekit.registry import RANK_LOSSES

__all__ = ['STD_ESTIMATORS', 'group_advantages', 'BaseRankLoss', 'GRPOLoss', 'ListwiseRankLoss',
           'PairwiseRankLoss']

_SCALES = ('group', 'batch', 'none')
#: the std estimator of the advantages: 'unbiased' divides by G - 1 (torch's default, what the
#: RankE release runs), 'population' by G
STD_ESTIMATORS = ('unbiased', 'population')


def _check_group_size(n: int, group_size, who: str) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) \
            or group_size < 1:
        raise ValueError(f'{who}: group_size must be a positive int (samples per prompt), '
                         f'got {group_size!r}')
    if n % group_size:
        raise ValueError(f'{who}: {n} rollouts do not split into groups of '
                         f'group_size={group_size}; N must be B * group_size, ordered group-major')
    return int(group_size)


def group_advantages(rewards: Tensor, group_size: int, scale: str = 'group',
                     std_eps: float = 1e-4, clamp: float | None = 5.0,
                     std: str = 'unbiased') -> tuple[Tensor, Tensor]:
    """Group-relative advantages of GRPO.

    ``A_i = (r_i - mean_g) / std_g`` with the std of the rollout's own group g ('group', released);
    'batch' divides by the std of all N rewards (the mean is still per group); 'none' only
    subtracts the group mean. ``std`` is the estimator: 'unbiased' (divide by G - 1, as the RankE
    release computes it) or 'population' (divide by G; advantages sqrt((G-1)/G) as large).

    A group whose std is below ``std_eps`` carries no ranking signal: its advantages are 0 in every
    mode (released threshold 1e-4; near-zero rewards such as products of probabilities want a
    larger one, e.g. 0.05). With 'batch', all advantages are 0 when the batch std is below
    ``std_eps``. The result is clamped to ``[-clamp, clamp]`` (None: no clamp) and detached.

    Returns:
        ``(advantages (N,), frac_zero_std)``: the fraction of groups whose std < ``std_eps``.
    """
    if scale not in _SCALES:
        raise ValueError(f'group_advantages: scale must be one of {_SCALES}, got {scale!r}')
    if rewards.dim() != 1:
        raise ValueError(f'group_advantages: rewards must be (N,), got {tuple(rewards.shape)}')
    if std not in STD_ESTIMATORS:
        raise ValueError(f'group_advantages: std must be one of {STD_ESTIMATORS}, got {std!r}')
    group_size = _check_group_size(len(rewards), group_size, 'group_advantages')
    unbiased = std == 'unbiased'
    # at least fp32 (a float64 run keeps its precision)
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    r = r.view(-1, group_size)
    mean, group_std = r.mean(1, keepdim=True), r.std(1, unbiased=unbiased, keepdim=True)
    flat = group_std < std_eps  # (B, 1): groups with (nearly) tied rewards
    adv = r - mean
    if scale == 'group':
        adv = adv / group_std.clamp_min(std_eps)
    elif scale == 'batch':
        batch_std = r.std(unbiased=unbiased)
        adv = adv / batch_std.clamp_min(std_eps) if batch_std >= std_eps else torch.zeros_like(adv)
    adv = adv.masked_fill(flat, 0.0).flatten()
    if clamp is not None:
        adv = adv.clamp(-clamp, clamp)
    return adv, flat.float().mean()


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp_min(1)


class BaseRankLoss(nn.Module):
    """Base of the policy ranking losses: input checks and per-sequence scores.

    Subclasses implement ``forward(logp, logp_old, rewards, group_size, logp_ref=None, mask=None)``
    returning ``dict(loss=..., **metrics)``; ``needs_logp_ref`` tells the model whether it must
    compute reference log-probs for this loss.
    """

    needs_logp_ref = False

    def _check(self, logp: Tensor, logp_old: Tensor, rewards: Tensor, group_size,
               logp_ref: Tensor | None, mask: Tensor | None) -> tuple[int, Tensor | None]:
        who = type(self).__name__
        if logp.dim() != 2:
            raise ValueError(f'{who}: logp must be (N, L) per-token log-probs, '
                             f'got shape {tuple(logp.shape)}')
        for name, t in (('logp_old', logp_old), ('logp_ref', logp_ref), ('mask', mask)):
            if t is not None and tuple(t.shape) != tuple(logp.shape):
                raise ValueError(f'{who}: {name} has shape {tuple(t.shape)} but logp has '
                                 f'{tuple(logp.shape)}; both must be (N, L) for the same rollouts')
        if tuple(rewards.shape) != (logp.shape[0],):
            raise ValueError(f'{who}: rewards must be (N,) = ({logp.shape[0]},) to match logp '
                             f'{tuple(logp.shape)}, got {tuple(rewards.shape)}')
        group_size = _check_group_size(logp.shape[0], group_size, who)
        if group_size < 2:
            raise ValueError(f'{who} needs group_size >= 2: {self._why_groups}')
        return group_size, None if mask is None else mask.to(torch.float32)

    _why_groups = 'a group of one sample has nothing to rank'

    def _base_logp(self, logp_old: Tensor, logp_ref: Tensor | None) -> Tensor:
        """The log-probs the scores are measured against (``reference`` = 'old' or 'ref')."""
        if getattr(self, 'reference', 'old') == 'old':
            return logp_old
        if logp_ref is None:
            raise ValueError(f"{type(self).__name__}(reference='ref') needs logp_ref (the frozen "
                             "reference policy's log-probs); pass it, or use reference='old'")
        return logp_ref

    @staticmethod
    def _sequence_scores(logp: Tensor, base: Tensor, mask: Tensor | None,
                         length_normalise: bool) -> Tensor:
        """sum_t (logp - base) over valid tokens, or their mean when ``length_normalise``."""
        delta = logp.float() - base.detach().float()
        if mask is None:
            return delta.mean(1) if length_normalise else delta.sum(1)
        total = (delta * mask).sum(1)
        return total / mask.sum(1).clamp_min(1) if length_normalise else total


@RANK_LOSSES.register_module()
class GRPOLoss(BaseRankLoss):
    """GRPO: group-normalised advantages with the PPO-clipped surrogate (RankE's policy loss).

    Per token t of rollout i, with ``A_i`` from :func:`group_advantages`:

        ratio_it = exp(logp_it - logp_old_it)
        loss_it  = -min(ratio_it * A_i, clip(ratio_it, 1 - eps, 1 + eps_high) * A_i)

    reduced by ``aggregation``: 'token_mean' = mean over all valid tokens of the batch
    (released), 'seq_mean' = mean over each sequence's valid tokens, then over sequences.

    Several PPO epochs over one rollout batch need nothing stored here: the trainer calls the
    loss again with fresh ``logp`` and the same ``logp_old``; the ratio then departs from 1 and
    the clip engages.

    Args:
        clip_eps: lower (and, by default, upper) clip range eps.
        scale / std_eps / adv_clamp / std: see :func:`group_advantages` (``std='unbiased'``
            as released; 'population' is what rankekit used before 2026-12).
        aggregation: 'token_mean' or 'seq_mean'.
        clip_eps_high: upper clip range ("clip-higher"); None -> ``clip_eps``.

    Forward args:
        logp: (N, L) online-policy token log-probs (with grad).
        logp_old: (N, L) behaviour-policy log-probs at rollout time (no grad).
        rewards: (N,) one reward per rollout, group-major.
        group_size: G, rollouts per prompt (>= 2).
        logp_ref: ignored (the KL anchor is a separate component).
        mask: (N, L), 1 where the token counts.

    Metrics: clip_frac (fraction of valid tokens where the clipped term is the minimum and
    differs, i.e. its gradient is cut), ratio_mean, approx_kl (mean of ``ratio - 1 - log ratio``,
    old -> new), adv_abs_mean, frac_zero_std, loss_surrogate.
    """

    info_example = dict(type='GRPOLoss', clip_eps=0.2)
    _why_groups = 'advantages are zero with one sample per prompt'

    def __init__(self, clip_eps: float = 0.2, scale: str = 'group', std_eps: float = 1e-4,
                 adv_clamp: float | None = 5.0, aggregation: str = 'token_mean',
                 clip_eps_high: float | None = None, std: str = 'unbiased'):
        super().__init__()
        if std not in STD_ESTIMATORS:
            raise ValueError(f'GRPOLoss: std must be one of {STD_ESTIMATORS} (unbiased: / (G-1), '
                             f'as released; population: / G), got {std!r}')
        if scale not in _SCALES:
            raise ValueError(f'GRPOLoss: scale must be one of {_SCALES}, got {scale!r}')
        if aggregation not in ('token_mean', 'seq_mean'):
            raise ValueError("GRPOLoss: aggregation must be 'token_mean' or 'seq_mean', "
                             f'got {aggregation!r}')
        if not 0 < clip_eps < 1 or (clip_eps_high is not None and clip_eps_high <= 0):
            raise ValueError(f'GRPOLoss: need 0 < clip_eps < 1 and clip_eps_high > 0, got '
                             f'clip_eps={clip_eps}, clip_eps_high={clip_eps_high}')
        self.clip_eps, self.clip_eps_high = clip_eps, clip_eps_high
        self.scale, self.std_eps, self.adv_clamp = scale, std_eps, adv_clamp
        self.aggregation, self.std = aggregation, std

    def forward(self, logp: Tensor, logp_old: Tensor, rewards: Tensor, group_size: int,
                logp_ref: Tensor | None = None, mask: Tensor | None = None) -> dict:
        group_size, mask = self._check(logp, logp_old, rewards, group_size, logp_ref, mask)
        adv, frac_zero_std = group_advantages(rewards, group_size, self.scale, self.std_eps,
                                              self.adv_clamp, self.std)
        adv = adv.to(logp.device)[:, None]
        log_ratio = logp.float() - logp_old.detach().float()
        ratio = log_ratio.exp()
        high = self.clip_eps if self.clip_eps_high is None else self.clip_eps_high
        unclipped = ratio * adv
        clipped = ratio.clamp(1 - self.clip_eps, 1 + high) * adv
        token_loss = -torch.minimum(unclipped, clipped)
        if self.aggregation == 'token_mean':
            loss = _masked_mean(token_loss, mask)
        elif mask is None:
            loss = token_loss.mean(1).mean()
        else:  # per-sequence mean; sequences with no valid token do not count
            count = mask.sum(1)
            seq = (token_loss * mask).sum(1) / count.clamp_min(1)
            has = (count > 0).float()
            loss = (seq * has).sum() / has.sum().clamp_min(1)
        with torch.no_grad():
            cut = (clipped < unclipped).float()  # the min picks the clipped, constant term
            metrics = dict(clip_frac=_masked_mean(cut, mask),
                           ratio_mean=_masked_mean(ratio, mask),
                           approx_kl=_masked_mean(ratio - 1 - log_ratio, mask),
                           adv_abs_mean=adv.abs().mean(), frac_zero_std=frac_zero_std,
                           loss_surrogate=loss.detach())
        return dict(loss=loss, **metrics)


def _average_ranks(x: Tensor) -> Tensor:
    """Per-row ranks (0-based), ties get the mean of the ranks they span; x is (B, G)."""
    less = (x[:, None, :] < x[:, :, None]).float().sum(-1)
    equal = (x[:, None, :] == x[:, :, None]).float().sum(-1)
    return less + (equal - 1) / 2


def _spearman(scores: Tensor, rewards: Tensor) -> Tensor:
    """Spearman correlation per group, averaged over groups whose rewards are not all tied.

    A group whose scores are all tied (e.g. s = 0 on the first PPO epoch) counts as 0.
    """
    a, b = _average_ranks(scores), _average_ranks(rewards)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denom = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    corr = (a * b).sum(1) / denom.clamp_min(1e-12)
    valid = b.pow(2).sum(1) > 0
    return corr[valid].mean() if valid.any() else corr.new_zeros(())


@RANK_LOSSES.register_module()
class ListwiseRankLoss(BaseRankLoss):
    """Listwise ranking over each group: softmax cross-entropy or Plackett-Luce likelihood.

    Each rollout's score is its policy log-likelihood ratio to a base policy:

        s_i = beta * sum_t (logp_it - base_it)      (mean over valid tokens if length_normalise)

    with base = logp_old (``reference='old'``) or the frozen reference logp_ref ('ref').
    Per group, then averaged over groups:

        softmax_ce:     loss = -sum_i softmax(r / tau)_i * log_softmax(s)_i
                        (tied rewards simply get equal target mass)
        plackett_luce:  order the group by reward, descending (ties: lower index first);
                        loss = sum_k [ -s_(k) + logsumexp(s_(k), ..., s_(G)) ]
                        = negative log-likelihood of that order under Plackett-Luce with scores s.

    Args:
        tau: temperature of the reward target (softmax_ce only).
        beta: scale of the scores.
        objective: 'softmax_ce' or 'plackett_luce'.
        length_normalise: mean instead of sum over tokens.
        reference: 'old' (behaviour policy) or 'ref' (frozen reference policy; needs logp_ref).

    Forward args: as :class:`GRPOLoss` (logp, logp_old, rewards, group_size, logp_ref, mask).

    Metrics: rank_corr (Spearman between s and r per group, averaged over groups with untied
    rewards), score_abs_mean (mean |s|).
    """

    info_example = dict(type='ListwiseRankLoss', objective='softmax_ce')

    def __init__(self, tau: float = 1.0, beta: float = 1.0, objective: str = 'softmax_ce',
                 length_normalise: bool = True, reference: str = 'old'):
        super().__init__()
        if objective not in ('softmax_ce', 'plackett_luce'):
            raise ValueError("ListwiseRankLoss: objective must be 'softmax_ce' or "
                             f"'plackett_luce', got {objective!r}")
        if reference not in ('old', 'ref'):
            raise ValueError(f"ListwiseRankLoss: reference must be 'old' or 'ref', "
                             f'got {reference!r}')
        if tau <= 0:
            raise ValueError(f'ListwiseRankLoss: tau must be > 0, got {tau}')
        self.tau, self.beta, self.objective = tau, beta, objective
        self.length_normalise, self.reference = length_normalise, reference
        self.needs_logp_ref = reference == 'ref'

    def forward(self, logp: Tensor, logp_old: Tensor, rewards: Tensor, group_size: int,
                logp_ref: Tensor | None = None, mask: Tensor | None = None) -> dict:
        group_size, mask = self._check(logp, logp_old, rewards, group_size, logp_ref, mask)
        base = self._base_logp(logp_old, logp_ref)
        s = self.beta * self._sequence_scores(logp, base, mask, self.length_normalise)
        s = s.view(-1, group_size)
        r = rewards.detach().float().to(s.device).view(-1, group_size)
        if self.objective == 'softmax_ce':
            target = F.softmax(r / self.tau, dim=1)
            loss = -(target * F.log_softmax(s, dim=1)).sum(1).mean()
        else:
            order = torch.sort(r, dim=1, descending=True, stable=True).indices
            s_sorted = s.gather(1, order)
            # logsumexp over each suffix s_(k..G): a reversed cumulative logsumexp
            suffix = s_sorted.flip(1).logcumsumexp(1).flip(1)
            loss = (suffix - s_sorted).sum(1).mean()
        with torch.no_grad():
            metrics = dict(rank_corr=_spearman(s.detach(), r), score_abs_mean=s.abs().mean())
        return dict(loss=loss, **metrics)


@RANK_LOSSES.register_module()
class PairwiseRankLoss(BaseRankLoss):
    """Pairwise Bradley-Terry / DPO-style loss over within-group pairs.

    Scores ``s_i = sum_t (logp_it - base_it)`` (mean over valid tokens if length_normalise),
    base = logp_old ('old') or logp_ref ('ref', DPO's implicit reward). Over every within-group
    pair (i, j) with ``r_i > r_j + margin``:

        loss = mean_pairs  -log sigmoid(beta * (s_i - s_j))

    When no pair is valid (e.g. all rewards tied) the loss is 0 with zero, finite gradients.

    Args:
        beta: DPO temperature.
        margin: a pair counts only when its reward gap exceeds this.
        reference: 'old' or 'ref' (needs logp_ref).
        length_normalise: mean instead of sum over tokens.
        max_pairs: per group, keep only the valid pairs with the largest reward gaps (at most this
            many; ties in gap broken by pair index, so deterministic). None: all pairs.

    Forward args: as :class:`GRPOLoss` (logp, logp_old, rewards, group_size, logp_ref, mask).

    Metrics: pair_acc (fraction of valid pairs with s_i > s_j), num_pairs.
    """

    info_example = dict(type='PairwiseRankLoss', beta=0.1)

    def __init__(self, beta: float = 0.1, margin: float = 0.0, reference: str = 'old',
                 length_normalise: bool = True, max_pairs: int | None = None):
        super().__init__()
        if reference not in ('old', 'ref'):
            raise ValueError(f"PairwiseRankLoss: reference must be 'old' or 'ref', "
                             f'got {reference!r}')
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f'PairwiseRankLoss: max_pairs must be >= 1 or None, got {max_pairs}')
        self.beta, self.margin, self.reference = beta, margin, reference
        self.length_normalise, self.max_pairs = length_normalise, max_pairs
        self.needs_logp_ref = reference == 'ref'

    def forward(self, logp: Tensor, logp_old: Tensor, rewards: Tensor, group_size: int,
                logp_ref: Tensor | None = None, mask: Tensor | None = None) -> dict:
        group_size, mask = self._check(logp, logp_old, rewards, group_size, logp_ref, mask)
        base = self._base_logp(logp_old, logp_ref)
        s = self._sequence_scores(logp, base, mask, self.length_normalise).view(-1, group_size)
        r = rewards.detach().float().to(s.device).view(-1, group_size)
        gap = r[:, :, None] - r[:, None, :]  # gap[b, i, j] = r_i - r_j
        valid = gap > self.margin
        if self.max_pairs is not None:
            flat = gap.masked_fill(~valid, float('-inf')).flatten(1)
            order = torch.sort(flat, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(valid.flatten(1))
            keep.scatter_(1, order[:, :self.max_pairs], True)
            valid = valid & keep.view_as(valid)
        diff = s[:, :, None] - s[:, None, :]  # s_i - s_j
        pair_loss = -F.logsigmoid(self.beta * diff)
        num = valid.sum()
        # where() keeps the graph and gives exact zero gradients for excluded pairs
        loss = torch.where(valid, pair_loss, torch.zeros_like(pair_loss)).sum() / num.clamp_min(1)
        with torch.no_grad():
            correct = (diff > 0) & valid
            metrics = dict(pair_acc=correct.sum().float() / num.clamp_min(1),
                           num_pairs=num.float())
        return dict(loss=loss, **metrics)
