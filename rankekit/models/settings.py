"""The settings of a RankE model, one typed class per config block, checked in one place.

``model.rollout`` -> :class:`RolloutCfg`, ``model.policy_cfg`` -> :class:`PolicyCfg`,
``model.decoder_cfg`` -> :class:`DecoderCfg`, ``model.safety`` -> :class:`SafetyCfg`. Config keys
are the field names; a block given in a config overrides the defaults key by key, an unknown key
is an error naming the closest one. :meth:`~Settings.check` validates types and ranges (the
checks that need the built parts live in :func:`rankekit.models.validation.check_built_model`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rankekit.utils.checks import check_bool, check_choice, check_int, check_number, show

#: the decoder (or policy) a combination names: trained, its EMA, or the initial one
DECODE_WITH = ('online', 'ema', 'base')
#: which rollouts the decoder phase decodes
POLICY_DECODE = ('selected', 'all')
#: the distribution logp, logp_old and logp_ref are taken under
LOGPROBS = ('conditional', 'sampler')
#: how the caption block attends to itself when the log-probs are taken
CAPTION_ATTENTION = ('causal', 'bidirectional')
#: the codebook rows LASC's soft latent mixes
LASC_CODEBOOK = ('normalized', 'raw')
#: the logits LASC's soft latent is the top-k softmax of
LASC_LOGITS = ('conditional', 'sampler')


class Settings:
    """Shared behaviour of the settings dataclasses: reading a config block, checking it."""

    #: the config key of the block (``model.<key>``)
    key = ''

    @classmethod
    def from_config(cls, given: dict | None, where: str = 'model') -> 'Settings':
        """The defaults overridden by ``given`` (a dict or None); unknown keys raise."""
        if given is None:
            given = {}
        if isinstance(given, cls):
            return given
        if not isinstance(given, dict):
            raise TypeError(f'{where}.{cls.key} must be a dict, got {show(given)}')
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(given) - set(names)
        if unknown:
            from rankekit.utils.build import close_matches
            hints = {k: close_matches(k, names, n=1) for k in unknown}
            detail = ', '.join(f"'{k}'" + (f" (did you mean '{h[0]}'?)" if h else '')
                               for k, h in sorted(hints.items()))
            raise KeyError(f'{where}.{cls.key} has unknown keys {detail}; allowed: '
                           f'{sorted(names)}')
        return cls(**given)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self, where: str = 'model') -> None:
        raise NotImplementedError


@dataclass
class RolloutCfg(Settings):
    """``model.rollout``: how the G rollouts of each prompt are drawn and rendered."""

    key = 'rollout'

    group_size: int = 8
    """G, rollouts per prompt (>= 2: group-relative advantages need someone to compare with)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance of the sampler; 1 runs the conditional rows only."""
    cfg_first_n: int | None = None
    """Guide the first N tokens only (None: all)."""
    temperature: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (0: no top-k filtering)."""
    top_p: float = 1.0
    """Nucleus filtering (1: none)."""
    decode_with: str = 'ema'
    """The decoder that renders rollouts for the rewards: 'ema' | 'online' | 'base'."""
    seed: int | None = None
    """The rollout RNG's seed (checkpointed); None: the run's seed."""

    def check(self, where: str = 'model') -> None:
        r = f'{where}.rollout'
        check_int(self.group_size, f'{r}.group_size', low=1)
        if self.group_size < 2:
            raise ValueError(
                f'{r}.group_size=1: with one rollout per prompt every group-relative advantage '
                'is zero (GRPO) and there is nothing to rank, so the policy would never learn. '
                'Use group_size >= 2 (the released runs use 8).')
        check_number(self.cfg_scale, f'{r}.cfg_scale', low=1.0,
                     why=' (1 = no guidance; below 1 the prompt is weakened, 0 = unconditional)')
        check_int(self.cfg_first_n, f'{r}.cfg_first_n', low=0, allow_none=True)
        check_number(self.temperature, f'{r}.temperature', low=0.0, low_open=True)
        check_int(self.top_k, f'{r}.top_k', low=0, why=' (0 = no top-k filtering)')
        check_number(self.top_p, f'{r}.top_p', low=0.0, high=1.0, low_open=True,
                     why=' (1 = no nucleus filtering)')
        check_choice(self.decode_with, f'{r}.decode_with', DECODE_WITH)
        if self.seed is not None:  # None: the run's seed
            check_int(self.seed, f'{r}.seed', low=0)

    def sampling(self) -> dict:
        """The sampler's keyword arguments (cfg_scale, cfg_first_n, temperature, top_k, top_p)."""
        return dict(cfg_scale=self.cfg_scale, cfg_first_n=self.cfg_first_n,
                    temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


@dataclass
class PolicyCfg(Settings):
    """``model.policy_cfg``: the policy phase."""

    key = 'policy_cfg'

    inner_epochs: int = 1
    """PPO epochs on one rollout."""
    ema_decay: float | None = 0.999
    """Decay of the policy EMA; None keeps no policy EMA."""
    ema_interval: int = 10
    """Policy steps between EMA updates."""
    grad_checkpointing: bool = False
    """Recompute each transformer block of the teacher-forced pass in the backward pass: the
    activation memory of one block instead of all, for about one more forward."""
    logprobs: str = 'conditional'
    """The distribution logp, logp_old and logp_ref are taken under: 'conditional' (as
    released: conditional logits, no CFG, temperature 1, no top-k) or 'sampler' (the one the
    rollout was drawn from: CFG-combined, temperature, top-k, top-p), so that the PPO ratio and
    the KL anchor estimate what they claim; it costs a second (unconditional) pass."""
    caption_attention: str = 'causal'
    """The attention mask of the caption block when log-probs are taken: 'causal' (the
    sampler's own mask, so the log-probs are those of the policy that drew the tokens) or
    'bidirectional' (the release's: every caption position sees the whole caption; the ratio is
    then not exactly 1 before the first update)."""

    def check(self, where: str = 'model') -> None:
        p = f'{where}.policy_cfg'
        check_int(self.inner_epochs, f'{p}.inner_epochs', low=1)
        check_number(self.ema_decay, f'{p}.ema_decay', low=0.0, high=1.0, high_open=True,
                     allow_none=True, why=' (None keeps no policy EMA; 1 would never move)')
        check_int(self.ema_interval, f'{p}.ema_interval', low=1)
        check_bool(self.grad_checkpointing, f'{p}.grad_checkpointing')
        check_choice(self.logprobs, f'{p}.logprobs', LOGPROBS)
        check_choice(self.caption_attention, f'{p}.caption_attention', CAPTION_ATTENTION)
        if self.caption_attention != 'causal' and self.logprobs == 'sampler':
            raise ValueError(f"{p}.caption_attention='{self.caption_attention}' describes the "
                             f"release's conditional log-probs; with logprobs='sampler' the "
                             f"sampler's own (causal) mask is the one that drew the tokens: use "
                             f"caption_attention='causal'")


@dataclass
class DecoderCfg(Settings):
    """``model.decoder_cfg``: the decoder phase (reconstruction anchor + rank-weighted terms)."""

    key = 'decoder_cfg'

    ema_decay: float = 0.99
    """Decay of the decoder EMA (one update per decoder step)."""
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    recon_weight: float = 1.0
    """Weight of the whole ground-truth reconstruction term (L1 + perceptual + GAN)."""
    gan_weight: float = 0.5
    adaptive_gan_weight: bool = True
    """Scale the GAN term by the ratio of the reconstruction and GAN gradient norms at the
    decoder's last layer (VQGAN's adaptive weight)."""
    disc_weight: float = 0.5
    """The discriminator's loss: this x VQGAN's halved hinge (0.5 x 0.5 = 0.25 x the two hinge
    terms, as released; 1.0 is rankekit's scale before 2026-12)."""
    disc_start: int = 100
    """Decoder steps before the adversarial terms start."""
    rank_gan_weight: float = 0.5
    """Rank-weighted GAN on policy decodes: -mean(w * Disc(D(z))) x this x gan_weight."""
    reward_weight: float = 0.01
    """Rank-weighted reward backprop through the decoder (differentiable rewards only)."""
    disc_sees_policy: bool = False
    """Also show policy decodes to the discriminator as fakes (the release never does)."""
    clamp_policy_decodes: bool = True
    """Clamp the online decode of policy tokens and the EMA decoder's target to [-1, 1] before
    every decoder term on policy tokens (rank-GAN, EMA consistency, reward, LASC's target), as the
    release does; clamped pixels then give no gradient. False: only the reward sees clamped
    images (rankekit before 2026-12)."""
    policy_decode: str = 'selected'
    """'selected': decode only rollouts with a non-zero rank weight; 'all'."""
    lasc_weight: float = 0.0
    lasc_top_k: int = 20
    lasc_codebook: str = 'normalized'
    """The codebook rows LASC's soft latent mixes: 'normalized' (unit rows, the ones the
    tokenizer's l2-normalised quantizer decodes) or 'raw' (the stored rows, as released)."""
    lasc_logits: str = 'conditional'
    """The logits whose top-k softmax weights LASC's rows: 'conditional' (the policy's
    teacher-forced conditional logits at rollout time, as released) or 'sampler' (the
    CFG-combined logits the rollout was drawn from)."""
    grad_checkpointing: bool = False
    """Recompute the online decoder's blocks in the backward pass."""

    def check(self, where: str = 'model') -> None:
        d = f'{where}.decoder_cfg'
        check_number(self.ema_decay, f'{d}.ema_decay', low=0.0, high=1.0, high_open=True,
                     why=' (an EMA with decay 1 never moves)')
        for name in ('l1_weight', 'perceptual_weight', 'recon_weight', 'gan_weight',
                     'disc_weight', 'rank_gan_weight', 'reward_weight', 'lasc_weight'):
            check_number(getattr(self, name), f'{d}.{name}', low=0.0,
                         why=' (0 turns the term off)')
        for name in ('adaptive_gan_weight', 'disc_sees_policy', 'clamp_policy_decodes',
                     'grad_checkpointing'):
            check_bool(getattr(self, name), f'{d}.{name}')
        check_int(self.disc_start, f'{d}.disc_start', low=0)
        check_choice(self.policy_decode, f'{d}.policy_decode', POLICY_DECODE)
        check_int(self.lasc_top_k, f'{d}.lasc_top_k', low=1)
        check_choice(self.lasc_codebook, f'{d}.lasc_codebook', LASC_CODEBOOK)
        check_choice(self.lasc_logits, f'{d}.lasc_logits', LASC_LOGITS)


@dataclass
class SafetyCfg(Settings):
    """``model.safety``: what non-finite values may do before the run stops."""

    key = 'safety'

    max_consecutive_skips: int = 20
    """Consecutive skipped updates (non-finite reward, loss or gradient) before the run stops
    with :class:`~rankekit.models.rank_e.NonFiniteError`."""

    def check(self, where: str = 'model') -> None:
        check_int(self.max_consecutive_skips, f'{where}.safety.max_consecutive_skips', low=1)


@dataclass
class LoraCfg(Settings):
    """``model.lora``: LoRA adapters on the policy (:mod:`rankekit.models.lora`)."""

    key = 'lora'

    r: int = 16
    """Rank of the adapters."""
    alpha: float = 32
    """Scale: the adapter's output is multiplied by alpha / r."""
    target_modules: list | None = None
    """Module-name suffixes of the linear layers to adapt; None: the policy class's
    ``lora_target_modules`` (the linear layers of its transformer blocks)."""

    def check(self, where: str = 'model') -> None:
        check_int(self.r, f'{where}.lora.r', low=1)
        check_number(self.alpha, f'{where}.lora.alpha', low=0.0, low_open=True)
        targets = self.target_modules
        if targets is not None and (isinstance(targets, str) or not all(
                isinstance(t, str) for t in targets)):
            raise TypeError(f"{where}.lora.target_modules must be None (the policy's default) or "
                            f"a list of module names, e.g. ['wqkv', 'wo'], got {show(targets)}")


SETTINGS = dict(rollout=RolloutCfg, policy_cfg=PolicyCfg, decoder_cfg=DecoderCfg,
                safety=SafetyCfg)


def settings_from_config(cfg: dict, where: str = 'model') -> dict[str, Settings]:
    """The four settings blocks of a RankEModel config, read and checked."""
    out = {key: cls.from_config(cfg.get(key), where) for key, cls in SETTINGS.items()}
    for block in out.values():
        block.check(where)
    return out


__all__ = ['Settings', 'RolloutCfg', 'PolicyCfg', 'DecoderCfg', 'SafetyCfg', 'LoraCfg', 'SETTINGS',
           'DECODE_WITH', 'POLICY_DECODE', 'LOGPROBS', 'CAPTION_ATTENTION', 'LASC_CODEBOOK',
           'LASC_LOGITS',
           'settings_from_config']
