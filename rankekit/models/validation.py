"""Build-time checks of a RankE model's settings: a bad value fails before training, not at step 1.

Two levels, both raising one clear message (which key, what is wrong, how to fix it):

- :func:`check_ranke_config`: the model config alone (no file read, nothing built): the nested
  components' types and keys (:func:`rankekit.utils.build.check_component_cfg`) and the settings
  blocks (:mod:`rankekit.models.settings`, which hold their own checks). ``tools/train.py`` runs
  it before the Runner creates anything in the work dir.
- :func:`check_built_model`: the settings against the built parts (top-k vs the policy's
  vocabulary, rank-weight top-k vs the group size, reward differentiability, the decoder anchor's
  perceptual net). :class:`~rankekit.models.rank_e.RankEModel` calls it at the end of its build.
"""
from __future__ import annotations

from rankekit.models.settings import LoraCfg, settings_from_config
from rankekit.utils.checks import check_choice, check_int, show

#: RankEModel argument -> the registry its config is built from
COMPONENT_REGISTRIES = dict(tokenizer='TOKENIZERS', policy='POLICIES', text_encoder='TEXT_ENCODERS',
                            rewards='REWARDS', rank_loss='RANK_LOSSES', rank_weights='RANK_WEIGHTS',
                            policy_anchor='ANCHORS', decoder_anchor='ANCHORS',
                            perceptual_loss='LOSSES', discriminator='MODELS')

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
                                f'got {show(sub)}')
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    check_reward_cfg(item, f'{where}.rewards[{i}]')
        elif isinstance(sub, dict):
            check_component_cfg(registry, sub, f'{where}.{key}', extra_keys=('pretrained',))
    settings_from_config(cfg, where)
    from rankekit.utils.memory import PRECISIONS
    check_choice(cfg.get('precision', 'fp32'), f'{where}.precision', PRECISIONS)
    if cfg.get('lora') is not None:
        LoraCfg.from_config(cfg['lora'], where).check(where)


def check_built_model(model, where: str = 'model') -> None:
    """Check a built RankEModel's settings against its parts (see the module docstring)."""
    rollout, decoder_cfg = model.rollout_cfg, model.decoder_cfg  # checked when read
    group = rollout.group_size
    vocab = getattr(model.policy, 'vocab_size', None)
    if isinstance(vocab, int):
        check_int(rollout.top_k, f'{where}.rollout.top_k', low=0, high=vocab,
                  why=f' (the policy has {vocab} image tokens; 0 = no top-k filtering)')
        if decoder_cfg.lasc_weight > 0:
            check_int(decoder_cfg.lasc_top_k, f'{where}.decoder_cfg.lasc_top_k', low=1,
                      high=vocab, why=f' (the policy has {vocab} image tokens)')
    for key, part, what in (('policy_cfg', model.policy, 'transformer blocks'),
                            ('decoder_cfg', model.tokenizer.decoder, 'decoder blocks')):
        if getattr(model, key).grad_checkpointing and not hasattr(part, 'blocks'):
            raise ValueError(f'{where}.{key}.grad_checkpointing=True needs {type(part).__name__} '
                             f'to list its {what} (a `blocks` property, as LlamaGenGPT, '
                             f'JanusProPolicy and the VQ decoder have); set it to False')
    if model.policy_cfg.logprobs == 'sampler' and not hasattr(model.policy,
                                                                 'sampler_log_probs'):
        raise ValueError(f"{where}.policy_cfg.logprobs='sampler' needs "
                         f'{type(model.policy).__name__}.sampler_log_probs (LlamaGenGPT and '
                         f"JanusProPolicy have it); use logprobs='conditional'")
    if model.policy_cfg.caption_attention != 'causal':
        import inspect
        if 'caption_attention' not in inspect.signature(model.policy.log_probs).parameters:
            raise ValueError(f"{where}.policy_cfg.caption_attention="
                             f"'{model.policy_cfg.caption_attention}' needs "
                             f'{type(model.policy).__name__}.log_probs to take a caption_attention '
                             f"argument (LlamaGenGPT does: it is the LlamaGen release's log-prob "
                             f"mask); use caption_attention='causal'")
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
    if decoder_cfg.reward_weight > 0 and not model.rewards.any_differentiable:
        names = model.rewards.names
        raise ValueError(
            f'{where}.decoder_cfg.reward_weight={decoder_cfg.reward_weight} needs a '
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
