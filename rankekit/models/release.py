"""Where rankekit and the RankE release (syjmelody/RankE @2798acc) may compute different things.

One list, read by ``rankekit info release``, docs/method.md (checked by a test to be this table)
and the official-iteration equivalence test (``tests/test_release_equivalence.py``), which builds
``RankEModel`` with every ``release`` value below and matches the release's outputs.

:data:`SETTINGS` are config keys: the release's value is always available, and the recipes'
default is either the release's (then rankekit only adds an option) or a deliberate fix.
:data:`BEHAVIOURS` are faults of the release that rankekit fixes without a setting, because the
released behaviour is a silent no-op, a double count or a crash; each says how to get the
release's numbers anyway where that makes sense.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReleaseSetting:
    """A config key whose value decides whether rankekit computes what the release computes."""

    key: str
    """Config key path, as ``--cfg-options`` takes it."""
    release: object
    """The value that reproduces the release."""
    recipes: str
    """What rankekit's recipes use (configs/ranke/ and their ablations)."""
    why: str
    """Why rankekit offers (or defaults to) another value."""

    @property
    def recipes_match_release(self) -> bool:
        return self.recipes == repr(self.release)


SETTINGS: tuple[ReleaseSetting, ...] = (
    ReleaseSetting(
        'model.rank_loss.std', 'unbiased', repr('unbiased'),
        "the release divides GRPO advantages by torch's unbiased group std (G - 1); "
        "'population' (divide by G) makes them sqrt(G/(G-1)) larger (x1.069 at G=8)"),
    ReleaseSetting(
        'model.decoder_cfg.clamp_policy_decodes', True, repr(True),
        'the release clamps the online decode of policy tokens and the EMA target to [-1, 1] '
        'before the rank-GAN, consistency and reward terms; False lets out-of-range pixels count '
        'and get gradients'),
    ReleaseSetting(
        'model.decoder_cfg.disc_weight', 0.5, repr(0.5),
        "times VQGAN's halved hinge: the release's discriminator loss is 0.25 x (E relu(1 - D(x)) "
        '+ E relu(1 + D(x_hat))); 1.0 doubles it'),
    ReleaseSetting(
        'optim_wrapper.discriminator.clip_grad', None, repr(None),
        "the release clips policy and decoder gradients at 1.0, never the discriminator's"),
    ReleaseSetting(
        'model.policy_cfg.caption_attention', 'bidirectional', repr('causal'),
        "the release takes log-probs with a bidirectional caption block, a mask the sampler never "
        "used, so logp_old is not the sampling policy's log-prob; 'causal' is the sampler's own "
        'mask (LlamaGen backbones only)'),
    ReleaseSetting(
        'model.rank_weights.top_k', 1, "1 (real recipes); 2 (toy recipes)",
        'K=1 makes every kept weight 1 (best-of-G selection, tau has no effect); K >= 2 turns on '
        "the reward-tilted softmax weights the paper describes"),
    ReleaseSetting(
        'model.rank_weights.mean_eps', 1e-8, repr(0.0),
        'the release divides the top-K softmax weights by (their mean + 1e-8), rankekit by the '
        'exact mean: a relative difference of K x 1e-8'),
    ReleaseSetting(
        'model.decoder_cfg.disc_sees_policy', False, repr(False),
        'an option: the release never shows policy decodes to the discriminator as fakes, so it '
        'cannot learn to tell them from real images'),
    ReleaseSetting(
        'model.decoder_cfg.lasc_codebook', 'raw', repr('normalized'),
        "LASC (off in released runs) mixes codebook rows; the tokenizer's quantizer decodes "
        'unit-norm rows, the release mixes the stored, unnormalised ones'),
    ReleaseSetting(
        'model.decoder_cfg.lasc_logits', 'conditional', repr('conditional'),
        "LASC's soft latent from the top-k of the conditional teacher-forced logits (released) "
        "or of the sampler's CFG-combined logits ('sampler')"),
    ReleaseSetting(
        'model.policy_cfg.logprobs', 'conditional', repr('conditional'),
        "an option: 'sampler' scores rollouts under the distribution they were drawn from "
        '(CFG, temperature, top-k), so that the PPO ratio and the KL are what they claim'),
    ReleaseSetting(
        'model.reward_normalize', 'none', repr('none'),
        "the release implements reward normalisation and leaves it off; 'running' / 'group' are "
        'options'),
)

BEHAVIOURS: tuple[tuple[str, str], ...] = (
    ('lr flags', 'the released scripts ignore their lr flags; rankekit uses the effective lrs '
                 '(policy 1e-6, decoder 1e-5, discriminator 2e-5) and honours the config'),
    ('step budget', 'the released scripts train until killed; rankekit stops at max_iters'),
    ('non-differentiable reward', 'the release silently skips the decoder reward term for it; '
                                  'rankekit refuses reward_weight > 0 at build (set 0 to match)'),
    ('disc_start', 'the release counts global iterations and still steps the discriminator '
                   'optimizer (weight decay only) before disc_start; rankekit counts decoder steps '
                   'and does not step it (equal under the sync schedule from disc_start on)'),
    ('decoder EMA (Janus)', 'the release updates the Janus EMA decoder twice per step; rankekit '
                            'once per decoder step, as on LlamaGen'),
    ('data parallel', 'the release may not all-reduce decoder gradients on the LlamaGen path; '
                      'rankekit averages every gradient over ranks'),
)


def render_markdown() -> str:
    """The table of docs/method.md ("Where rankekit and the release may differ")."""
    lines = ['| setting | release | rankekit recipes | why |', '|---|---|---|---|']
    for s in SETTINGS:
        lines.append(f'| `{s.key}` | `{s.release!r}` | {s.recipes} | {s.why} |')
    lines += ['', '| behaviour (no setting) | what rankekit does |', '|---|---|']
    lines += [f'| {name} | {what} |' for name, what in BEHAVIOURS]
    return '\n'.join(lines)


def release_cfg_options() -> dict:
    """``--cfg-options`` that set every setting to the release's value."""
    return {s.key: s.release for s in SETTINGS}


__all__ = ['ReleaseSetting', 'SETTINGS', 'BEHAVIOURS', 'render_markdown', 'release_cfg_options']
