"""Hooks that schedule the co-evolution: which phase runs when, and annealed coefficients."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from rankekit.engine.schedules import build_schedule
from rankekit.registry import HOOKS

_SCHEDULES = ('sync', 'alternate')
_MODES = ('both', 'policy', 'decoder')


@HOOKS.register_module()
class CoEvolutionHook(Hook):
    """Decide, before each iteration, which phases of RankEModel run, and anneal coefficients.

    Schedules (one rollout per iteration either way):

    - ``sync``: the policy and the decoder update in every iteration on the same rollout
      (as released);
    - ``alternate``: ``policy_iters`` policy-only iterations, then ``decoder_iters``
      decoder-only iterations, repeated.

    ``train_mode`` restricts training to ``'policy'`` (standard RL, frozen decoder),
    ``'decoder'`` or ``'both'`` (RankE). During the first ``warmup_iters`` iterations only
    ``warmup_mode`` (``'policy'`` or ``'decoder'``) trains.

    ``tau`` is the temperature schedule of the decoder's rank weights (a number or a schedule
    dict, e.g. ``dict(type='cosine', start=4.0, end=1.0, stop=0.2)``: 4 -> 1 over the first 20%
    of iterations, as released); ``coefficients`` maps ``policy_anchor`` / ``decoder_anchor`` to
    weight schedules. Nothing is computed here: the hook only sets flags and numbers on the model.
    """

    priority = 'ABOVE_NORMAL'
    info_example = dict(type='CoEvolutionHook', schedule='sync')

    def __init__(self, schedule: str = 'sync', train_mode: str = 'both', policy_iters: int = 1,
                 decoder_iters: int = 1, warmup_iters: int = 0, warmup_mode: str = 'policy',
                 tau=None, coefficients: dict | None = None):
        if schedule not in _SCHEDULES:
            raise ValueError(f"CoEvolutionHook schedule '{schedule}' is unknown; use {_SCHEDULES}")
        if train_mode not in _MODES:
            raise ValueError(f"CoEvolutionHook train_mode '{train_mode}' is unknown; use {_MODES}")
        if warmup_mode not in ('policy', 'decoder'):
            raise ValueError("CoEvolutionHook warmup_mode must be 'policy' or 'decoder'")
        if policy_iters < 1 or decoder_iters < 1:
            raise ValueError('CoEvolutionHook policy_iters and decoder_iters must be >= 1')
        coefficients = dict(coefficients or {})
        unknown = set(coefficients) - {'policy_anchor', 'decoder_anchor'}
        if unknown:
            raise KeyError(f'CoEvolutionHook coefficients has unknown keys {sorted(unknown)}; '
                           "use 'policy_anchor' and/or 'decoder_anchor'")
        self.schedule = schedule
        self.train_mode = train_mode
        self.policy_iters, self.decoder_iters = int(policy_iters), int(decoder_iters)
        self.warmup_iters, self.warmup_mode = int(warmup_iters), warmup_mode
        self.tau = build_schedule(tau) if tau is not None else None
        self.coefficients = {k: build_schedule(v) for k, v in coefficients.items()}

    def phases_at(self, it: int) -> dict[str, bool]:
        """Which phases run at iteration ``it`` (0-based)."""
        if it < self.warmup_iters:
            policy, decoder = self.warmup_mode == 'policy', self.warmup_mode == 'decoder'
        elif self.schedule == 'sync':
            policy = decoder = True
        else:
            cycle = (it - self.warmup_iters) % (self.policy_iters + self.decoder_iters)
            policy = cycle < self.policy_iters
            decoder = not policy
        if self.train_mode == 'policy':
            decoder = False
        elif self.train_mode == 'decoder':
            policy = False
        return dict(policy=policy, decoder=decoder)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        it, max_iters = runner.iter, runner.max_iters
        model.phases = self.phases_at(it)
        values = {}
        if self.tau is not None:
            model.rank_weights.tau = values['tau'] = self.tau(it, max_iters)
        for key, schedule in self.coefficients.items():
            anchor = getattr(model, key, None)
            if anchor is None:
                raise KeyError(f'CoEvolutionHook anneals {key}, but the model has no {key} '
                               '(it is None in the config)')
            anchor.weight = values[f'coef/{key}'] = schedule(it, max_iters)
        for key in ('policy_anchor', 'decoder_anchor'):
            anchor = getattr(model, key, None)
            if anchor is not None and f'coef/{key}' not in values:
                values[f'coef/{key}'] = anchor.weight
        for key, value in values.items():
            runner.message_hub.update_scalar(f'train/{key}', value)
