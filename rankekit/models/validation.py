"""Build-time checks of a RankE model's settings: a bad value fails before training, not at step 1.

Two levels, both raising one clear message (which key, what is wrong, how to fix it):

- :func:`check_ranke_config`: the model config alone (no file read, nothing built): the nested
  components' types and keys (:func:`rankekit.utils.build.check_component_cfg`) and the types and
  ranges of ``rollout`` / ``policy_cfg`` / ``decoder_cfg`` / ``safety``. ``tools/train.py`` runs it
  before the Runner creates anything in the work dir.
- :func:`check_built_model`: the settings against the built parts (top-k vs the policy's
  vocabulary, rank-weight top-k vs the group size, reward differentiability, the decoder anchor's
  perceptual net). :class:`~rankekit.models.rank_e.RankEModel` calls it at the end of its build.
"""
from __future__ import annotations

import numbers

#: RankEModel argument -> the registry its config is built from
COMPONENT_REGISTRIES = dict(tokenizer='TOKENIZERS', policy='POLICIES', text_encoder='TEXT_ENCODERS',
                            rewards='REWARDS', rank_loss='RANK_LOSSES', rank_weights='RANK_WEIGHTS',
                            policy_anchor='ANCHORS', decoder_anchor='ANCHORS',
                            perceptual_loss='LOSSES', discriminator='MODELS')

_DECODE_WITH = ('online', 'ema', 'base')


def _show(value) -> str:
    return f'{value!r} ({type(value).__name__})'


def _hint(value) -> str:
    from rankekit.utils.build import type_hint
    return type_hint(value)


def check_int(value, key: str, low: int | None = None, high: int | None = None,
              allow_none: bool = False, why: str = '') -> None:
    """``value`` is an int (not a bool, not a float) in [low, high], or None when allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = 'an int' + (' or None' if allow_none else '')
        raise TypeError(f'{key} must be {kind}, got {_show(value)}{_hint(value)}')
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f'in [{low}, {high}]' if high is not None and low is not None
                  else f'>= {low}' if low is not None else f'<= {high}')
        raise ValueError(f'{key} must be {bounds}, got {value}{why}')


def check_number(value, key: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False,
                 why: str = '') -> None:
    """``value`` is a real number (not a bool) in the interval given, or None when allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = 'a number' + (' or None' if allow_none else '')
        raise TypeError(f'{key} must be {kind}, got {_show(value)}{_hint(value)}')
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # NaN compares false
        left = '(' if low_open else '['
        right = ')' if high_open else ']'
        bounds = (f'in {left}{low}, {high}{right}' if low is not None and high is not None
                  else (f'> {low}' if low_open else f'>= {low}') if low is not None
                  else (f'< {high}' if high_open else f'<= {high}'))
        raise ValueError(f'{key} must be {bounds}, got {value}{why}')


def check_bool(value, key: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f'{key} must be True or False, got {_show(value)}')


def check_choice(value, key: str, choices) -> None:
    if value not in choices:
        from rankekit.utils.build import did_you_mean
        hint = did_you_mean(value, choices) if isinstance(value, str) else ''
        raise ValueError(f'{key} must be one of {tuple(choices)}, got {value!r}.{hint}')


def check_settings(rollout: dict, policy_cfg: dict, decoder_cfg: dict, safety: dict,
                   where: str = 'model') -> None:
    """Types and ranges of the (merged) settings dicts of a RankEModel."""
    r = f'{where}.rollout'
    group = rollout['group_size']
    check_int(group, f'{r}.group_size', low=1)
    if group < 2:
        raise ValueError(
            f'{r}.group_size=1: with one rollout per prompt every group-relative advantage is zero '
            '(GRPO) and there is nothing to rank, so the policy would never learn. Use '
            'group_size >= 2 (the released runs use 8).')
    check_number(rollout['cfg_scale'], f'{r}.cfg_scale', low=1.0,
                 why=' (1 = no guidance; below 1 the prompt is weakened, 0 = unconditional)')
    check_int(rollout['cfg_first_n'], f'{r}.cfg_first_n', low=0, allow_none=True)
    check_number(rollout['temperature'], f'{r}.temperature', low=0.0, low_open=True)
    check_int(rollout['top_k'], f'{r}.top_k', low=0, why=' (0 = no top-k filtering)')
    check_number(rollout['top_p'], f'{r}.top_p', low=0.0, high=1.0, low_open=True,
                 why=' (1 = no nucleus filtering)')
    check_choice(rollout['decode_with'], f'{r}.decode_with', _DECODE_WITH)
    if rollout['seed'] is not None:  # None: the run's seed
        check_int(rollout['seed'], f'{r}.seed', low=0)

    p = f'{where}.policy_cfg'
    check_int(policy_cfg['inner_epochs'], f'{p}.inner_epochs', low=1)
    check_number(policy_cfg['ema_decay'], f'{p}.ema_decay', low=0.0, high=1.0, high_open=True,
                 allow_none=True, why=' (None keeps no policy EMA; 1 would never move)')
    check_int(policy_cfg['ema_interval'], f'{p}.ema_interval', low=1)
    check_bool(policy_cfg['grad_checkpointing'], f'{p}.grad_checkpointing')
    check_choice(policy_cfg['logprobs'], f'{p}.logprobs', ('conditional', 'sampler'))

    d = f'{where}.decoder_cfg'
    check_number(decoder_cfg['ema_decay'], f'{d}.ema_decay', low=0.0, high=1.0, high_open=True,
                 why=' (an EMA with decay 1 never moves)')
    for key in ('l1_weight', 'perceptual_weight', 'recon_weight', 'gan_weight', 'disc_weight',
                'rank_gan_weight', 'reward_weight', 'lasc_weight'):
        check_number(decoder_cfg[key], f'{d}.{key}', low=0.0, why=' (0 turns the term off)')
    for key in ('adaptive_gan_weight', 'disc_sees_policy', 'grad_checkpointing'):
        check_bool(decoder_cfg[key], f'{d}.{key}')
    check_int(decoder_cfg['disc_start'], f'{d}.disc_start', low=0)
    check_choice(decoder_cfg['policy_decode'], f'{d}.policy_decode', ('selected', 'all'))
    check_int(decoder_cfg['lasc_top_k'], f'{d}.lasc_top_k', low=1)

    if 'max_consecutive_skips' in safety:
        check_int(safety['max_consecutive_skips'], f'{where}.safety.max_consecutive_skips', low=1)


def merged_settings(cfg: dict, where: str = 'model') -> tuple[dict, dict, dict, dict]:
    """The rollout / policy_cfg / decoder_cfg / safety dicts of a RankEModel config with their
    defaults (unknown keys raise, with the close match)."""
    from rankekit.models.rank_e import (DEFAULT_DECODER, DEFAULT_POLICY, DEFAULT_ROLLOUT,
                                        DEFAULT_SAFETY, _merge)
    parts = []
    for key, defaults in (('rollout', DEFAULT_ROLLOUT), ('policy_cfg', DEFAULT_POLICY),
                          ('decoder_cfg', DEFAULT_DECODER), ('safety', DEFAULT_SAFETY)):
        given = cfg.get(key)
        if given is not None and not isinstance(given, dict):
            raise TypeError(f'{where}.{key} must be a dict, got {_show(given)}')
        parts.append(_merge(defaults, given, key))
    return tuple(parts)


def check_ranke_config(cfg: dict, where: str = 'model') -> None:
    """Check a RankEModel config without building anything (see the module docstring)."""
    from rankekit import registry as registries
    from rankekit.rewards.adapter import check_reward_cfg
    from rankekit.utils.build import check_component_cfg
    for key, registry_name in COMPONENT_REGISTRIES.items():
        sub = cfg.get(key)
        if sub is None:
            continue
        registry = getattr(registries, registry_name)
        if key == 'rewards':
            items = [sub] if isinstance(sub, dict) else sub
            if not isinstance(items, (list, tuple)):
                raise TypeError(f'{where}.rewards must be a reward config dict or a list of them, '
                                f'got {_show(sub)}')
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    check_reward_cfg(item, f'{where}.rewards[{i}]')
        elif isinstance(sub, dict):
            check_component_cfg(registry, sub, f'{where}.{key}', extra_keys=('pretrained',))
    check_settings(*merged_settings(cfg, where), where=where)
    from rankekit.utils.memory import PRECISIONS
    check_choice(cfg.get('precision', 'fp32'), f'{where}.precision', PRECISIONS)
    check_lora(cfg.get('lora'), where)


def check_lora(lora, where: str = 'model') -> None:
    """``model.lora``: None, or r (int >= 1), alpha (> 0), target_modules (None or names)."""
    if lora is None:
        return
    if not isinstance(lora, dict):
        raise TypeError(f'{where}.lora must be None or a dict (r, alpha, target_modules), got '
                        f'{_show(lora)}')
    from rankekit.models.lora import DEFAULT_LORA
    from rankekit.models.rank_e import _merge
    lora = _merge(DEFAULT_LORA, lora, 'lora')
    check_int(lora['r'], f'{where}.lora.r', low=1)
    check_number(lora['alpha'], f'{where}.lora.alpha', low=0.0, low_open=True)
    targets = lora['target_modules']
    if targets is not None and (isinstance(targets, str) or not all(
            isinstance(t, str) for t in targets)):
        raise TypeError(f"{where}.lora.target_modules must be None (the policy's default) or a "
                        f"list of module names, e.g. ['wqkv', 'wo'], got {_show(targets)}")


def check_built_model(model, where: str = 'model') -> None:
    """Check a built RankEModel's settings against its parts (see the module docstring)."""
    rollout, decoder_cfg = model.rollout_cfg, model.decoder_cfg
    check_settings(rollout, model.policy_cfg, decoder_cfg, model.safety, where)
    group = rollout['group_size']
    vocab = getattr(model.policy, 'vocab_size', None)
    if isinstance(vocab, int):
        check_int(rollout['top_k'], f'{where}.rollout.top_k', low=0, high=vocab,
                  why=f' (the policy has {vocab} image tokens; 0 = no top-k filtering)')
        if decoder_cfg['lasc_weight'] > 0:
            check_int(decoder_cfg['lasc_top_k'], f'{where}.decoder_cfg.lasc_top_k', low=1,
                      high=vocab, why=f' (the policy has {vocab} image tokens)')
    for key, part, what in (('policy_cfg', model.policy, 'transformer blocks'),
                            ('decoder_cfg', model.tokenizer.decoder, 'decoder blocks')):
        if getattr(model, key)['grad_checkpointing'] and not hasattr(part, 'blocks'):
            raise ValueError(f'{where}.{key}.grad_checkpointing=True needs {type(part).__name__} '
                             f'to list its {what} (a `blocks` property, as LlamaGenGPT, '
                             f'JanusProPolicy and the VQ decoder have); set it to False')
    if model.policy_cfg['logprobs'] == 'sampler' and not hasattr(model.policy,
                                                                 'sampler_log_probs'):
        raise ValueError(f"{where}.policy_cfg.logprobs='sampler' needs "
                         f'{type(model.policy).__name__}.sampler_log_probs (LlamaGenGPT and '
                         f"JanusProPolicy have it); use logprobs='conditional'")
    if model.lora_cfg is not None:
        anchor = model.policy_anchor
        if anchor is not None and getattr(anchor, 'uses', 'outputs') == 'params':
            raise ValueError(f'{where}.policy_anchor ({type(anchor).__name__}) compares parameters '
                             f'with a reference copy, which a LoRA policy does not keep (its '
                             f'reference is the adapter switched off); use a KL or EMA anchor, '
                             f'or set {where}.lora=None')
    top_k = getattr(model.rank_weights, 'top_k', None)
    if isinstance(top_k, int) and top_k > group:
        raise ValueError(f'{where}.rank_weights.top_k={top_k} is larger than '
                         f'{where}.rollout.group_size={group}: a group has only {group} rollouts '
                         f'to keep; set top_k <= group_size (the release keeps 1)')
    if decoder_cfg['reward_weight'] > 0 and not model.rewards.any_differentiable:
        names = model.rewards.names
        raise ValueError(
            f'{where}.decoder_cfg.reward_weight={decoder_cfg["reward_weight"]} needs a '
            f'differentiable reward, but reward(s) {names} are not differentiable, so the '
            f'decoder reward-backprop term would get no gradient. Set '
            f'{where}.decoder_cfg.reward_weight=0, or use a differentiable reward '
            f'(differentiable=True on a reward that supports it, e.g. ClipScore, HPSv2).')
    anchor = model.decoder_anchor
    if anchor is not None and getattr(anchor, 'distance', None) == 'perceptual' \
            and getattr(anchor, 'uses', 'outputs') == 'outputs' and model.perceptual is None:
        raise ValueError(f"{where}.decoder_anchor ({type(anchor).__name__}) uses "
                         f"distance='perceptual' but {where}.perceptual_loss is not set; add a "
                         f"perceptual loss (e.g. perceptual_loss=dict(type='LPIPSLoss')) or use "
                         f"distance='mse'")
