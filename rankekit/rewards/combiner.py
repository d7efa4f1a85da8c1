"""Several rewards into one score per rollout: weights, normalisation, per-reward statistics."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from rankekit.rewards.adapter import build_reward
from rankekit.utils.build import did_you_mean
from rankekit.utils.distributed import all_ranks_true, mean_var_over_ranks

NORMALIZE_CHOICES = ('none', 'running', 'group')


class RewardCombiner(nn.Module):
    """Weighted sum of rewards after an optional normalisation of each reward.

    combined_i = sum_k w_k * norm_k(r_k,i), with ``normalize``:

    - ``'none'``: raw scores;
    - ``'running'``: (r - mu_k) / sigma_k with running mean/std of reward k over training
      (momentum ``running_momentum``; statistics are buffers, so they are checkpointed; under
      data parallelism each update uses the statistics of the global batch, all ranks agree);
    - ``'group'``: (r - mean_group) / std_group over the G rollouts of each prompt; a group whose
      std is below ``group_std_eps`` is flat and normalises to 0 (not to rounding noise blown up
      to unit scale, which would hide it from GRPO's own zero-std check; RankEModel passes the
      rank loss's ``std_eps``).

    ``score(images, prompts)`` is the no-grad path used to rank rollouts; it returns the combined
    scores and each reward's raw scores (for logging). ``differentiable_score`` is the path with a
    gradient to the images, used for reward backprop into the decoder: only the differentiable
    rewards take part, with the same (detached) normalisation.
    """

    def __init__(self, rewards: list, weights: list[float] | None = None,
                 normalize: str = 'none', running_momentum: float = 0.01, eps: float = 1e-6,
                 group_std_eps: float = 1e-4):
        super().__init__()
        if isinstance(rewards, (dict, nn.Module)):
            rewards = [rewards]
        if not rewards:
            raise ValueError('model.rewards is empty: give at least one reward config, e.g. '
                             "rewards=[dict(type='ClipScore', ...)]")
        if not isinstance(rewards, (list, tuple)):
            raise TypeError(f'model.rewards must be a reward config dict or a list of them, got '
                            f'{type(rewards).__name__}')
        modules = [build_reward(r, f'model.rewards[{i}]') for i, r in enumerate(rewards)]
        names = [m.name for m in modules]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f'model.rewards: reward names must be unique (logs and statistics are '
                             f'keyed by name), got {names}; {twice} appear more than once. Set '
                             f"name='...' on the duplicate reward configs")
        if weights is None:
            weights = [1.0] * len(modules)
        if len(weights) != len(modules):
            raise ValueError(f'model.reward_weights has {len(weights)} entries for '
                             f'{len(modules)} rewards {names}; give one weight per reward')
        bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float))
               or w != w]
        if bad:
            raise TypeError(f'model.reward_weights must be numbers (one per reward), got '
                            f'{bad[0]!r} ({type(bad[0]).__name__})')
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"reward normalize='{normalize}' is unknown (model.reward_normalize); "
                             f'use one of {NORMALIZE_CHOICES}.'
                             f'{did_you_mean(normalize, NORMALIZE_CHOICES)}')
        self.rewards = nn.ModuleList(modules)
        for reward in self.rewards:
            reward.requires_grad_(False)
        self.weights = [float(w) for w in weights]
        self.normalize = normalize
        self.momentum = running_momentum
        self.eps = eps  # floor of the running std
        if not group_std_eps > 0:
            raise ValueError(f'the group normalisation threshold must be > 0, got '
                             f'{group_std_eps} (model.reward_std_eps)')
        self.group_std_eps = float(group_std_eps)
        self.register_buffer('running_mean', torch.zeros(len(modules)))
        self.register_buffer('running_var', torch.ones(len(modules)))
        self.register_buffer('running_initialised', torch.zeros((), dtype=torch.bool))
        #: reward name -> how many of its scores were NaN/inf in the last :meth:`score` call
        self.last_nonfinite: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def any_differentiable(self) -> bool:
        return any(r.differentiable for r in self.rewards)

    def _run(self, reward: nn.Module, images: Tensor, prompts: list[str]) -> Tensor:
        scores = reward(images, prompts)
        if not isinstance(scores, Tensor) or scores.shape != (len(prompts),):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"reward '{reward.name}' returned {shape} for {len(prompts)} images; "
                             'a reward must return a tensor of shape (N,)')
        return scores.to(torch.promote_types(scores.dtype, torch.float32))  # at least fp32

    def _normalize(self, raw: Tensor, group_size: int, update: bool) -> Tensor:
        """raw: (K, N) -> normalized (K, N); statistics are treated as constants."""
        if self.normalize == 'none':
            return raw
        if self.normalize == 'group':
            grouped = raw.view(raw.shape[0], -1, group_size)
            mean = grouped.mean(-1, keepdim=True).detach()
            std = grouped.std(-1, unbiased=False, keepdim=True).detach()
            return self._group_z(grouped, mean, std).view_as(raw)
        if update:
            with torch.no_grad():
                mean, var = mean_var_over_ranks(raw.to(self.running_mean))
                if not bool(self.running_initialised):
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
                    self.running_initialised.fill_(True)
                else:
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_var.lerp_(var, self.momentum)
        std = self.running_var.sqrt().clamp_min(self.eps)
        return (raw - self.running_mean[:, None]) / std[:, None]

    def _group_z(self, raw: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """(raw - mean) / std, and 0 where std < group_std_eps (a flat group: no ranking signal;
        the masked branch has a zero gradient)."""
        flat = std < self.group_std_eps
        z = (raw - mean) / std.clamp_min(self.group_std_eps)
        return torch.where(flat, torch.zeros_like(z), z)

    def _combine(self, normalized: Tensor, which: list[int]) -> Tensor:
        weights = normalized.new_tensor([self.weights[k] for k in which])
        return (weights[:, None] * normalized).sum(0)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str], group_size: int = 1,
              update_stats: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Combined scores (N,) and each reward's raw scores, without gradients.

        Non-finite raw scores are returned as they are: the caller decides to skip the update.
        Running statistics are only updated when every score is finite.
        """
        raw = torch.stack([self._run(r, images, prompts) for r in self.rewards])
        bad = (~torch.isfinite(raw)).sum(1).tolist()
        self.last_nonfinite = {name: int(n) for name, n in zip(self.names, bad) if n}
        finite = not self.last_nonfinite
        if self.normalize == 'running' and update_stats:  # all ranks update together, or none
            finite = all_ranks_true(finite, raw.device)
        normalized = self._normalize(raw, group_size, update=update_stats and finite)
        combined = self._combine(normalized, list(range(len(self.rewards))))
        return combined, {name: raw[k] for k, name in enumerate(self.names)}

    def differentiable_score(self, images: Tensor, prompts: list[str],
                             group_stats: dict[str, tuple[Tensor, Tensor]] | None = None
                             ) -> Tensor | None:
        """Combined score of the differentiable rewards with a gradient to ``images``.

        The normalisation is the same affine map as in :meth:`score`, with its statistics held
        constant: running statistics, or for ``'group'`` the mean/std (per image, shape (n,)) of
        the image's prompt group, given by name in ``group_stats`` (the images here are usually
        a selection of rollouts, not whole groups). Returns None when no reward is
        differentiable (the caller drops the term and says so).
        """
        which = [k for k, r in enumerate(self.rewards) if r.differentiable]
        if not which:
            return None
        raw = torch.stack([self._run(self.rewards[k], images, prompts) for k in which])
        if self.normalize == 'running':
            std = self.running_var[which].sqrt().clamp_min(self.eps)
            normalized = (raw - self.running_mean[which, None]) / std[:, None]
        elif self.normalize == 'group':
            if group_stats is None:
                raise ValueError("reward_normalize='group' needs the rollout groups' statistics")
            names = self.names
            mean = torch.stack([group_stats[names[k]][0] for k in which]).to(raw)
            std = torch.stack([group_stats[names[k]][1] for k in which]).to(raw)
            normalized = self._group_z(raw, mean, std)
        else:
            normalized = raw
        return self._combine(normalized, which)

    @staticmethod
    def group_statistics(raw: dict[str, Tensor], group_size: int,
                         index: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per reward: the mean and std of each selected rollout's group, shape (len(index),)."""
        stats = {}
        for name, values in raw.items():
            grouped = values.view(-1, group_size)
            groups = index // group_size
            stats[name] = (grouped.mean(-1)[groups], grouped.std(-1, unbiased=False)[groups])
        return stats

    def nonfinite_summary(self) -> str:
        """Which rewards gave NaN/inf in the last :meth:`score`, for messages ('' if none)."""
        return ', '.join(f"reward '{name}' ({n} non-finite score{'s' if n > 1 else ''})"
                         for name, n in self.last_nonfinite.items())

    def warn_non_differentiable(self) -> list[str]:
        """Names of the rewards that cannot give a decoder gradient (warned about once)."""
        names = [r.name for r in self.rewards if not r.differentiable]
        if names and not getattr(self, '_warned', False):
            warnings.warn(f'rewards {names} are not differentiable: they take no part in the '
                          'decoder reward-backprop term (decoder.reward_weight); ranking still '
                          'uses them', stacklevel=2)
            self._warned = True
        return names
