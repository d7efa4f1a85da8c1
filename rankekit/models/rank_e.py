"""RankEModel: the AR policy and the VQ decoder trained together with ranking-based RL.

One iteration (``train_step``), phases switched on by :class:`rankekit.engine.CoEvolutionHook`::

    prompts -> text encoder -> policy.sample (G per prompt)            -> tokens z   (N = B*G)
    z -> rollout decoder (EMA by default) -> images -> rewards r       (no gradient)
    policy phase : rank_loss(logp, logp_old, r) + w_a * policy_anchor
    decoder phase: discriminator step (real vs GT reconstructions [+ policy decodes])
                   then  recon(x_gt)  [L1 + perceptual + adaptive hinge GAN]
                       + rank-weighted GAN on D(z)      - w_g * mean(w_i * Disc(D(z_i)))
                       + rank-weighted reward backprop  - w_r * mean(w_i * r(D(z_i)))
                       + w_a * decoder_anchor           (EMA consistency by default)
                       + LASC (optional)

Only the decoder and ``post_quant_conv`` of the tokenizer train; the encoder, ``quant_conv``
and the codebook are frozen (checked at build). A non-finite reward, loss or gradient skips the
update it would have reached, is counted (``skipped_nonfinite``) and never touches the weights.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import Tensor, nn

from rankekit.losses.decoder_terms import (lasc_loss, rank_weighted_gan_loss,
                                           rank_weighted_reward_loss, soft_code_latents)
from rankekit.losses.gan import adaptive_gan_weight, hinge_d_loss
from rankekit.models.ema import ema_update_, frozen_copy
from rankekit.models.settings import (DECODE_WITH, DecoderCfg, LoraCfg, PolicyCfg, RolloutCfg,
                                      SafetyCfg, settings_from_config)
from rankekit.models.lora import (AdapterEMA, add_lora, adapters_disabled,
                                  is_adapter_key, merged_state_dict)
from rankekit.policies.sampling import draw_uniforms
from rankekit.registry import (ANCHORS, LOSSES, MODELS, POLICIES, RANK_LOSSES, RANK_WEIGHTS,
                               TEXT_ENCODERS, TOKENIZERS)
from rankekit.rewards.combiner import RewardCombiner
from rankekit.utils.build import build_module
from rankekit.utils.checks import check_number
from rankekit.utils.distributed import (all_ranks_true, average_gradients_, average_tensors_,
                                        local_part, rank_rows)
from rankekit.utils.memory import PRECISIONS, autocast, recompute_in_backward

# frozen modules rebuilt from their config files: left out of checkpoints (a ViT-L/14 reward or a
# flan-t5-xl encoder would otherwise add gigabytes to every checkpoint); the reference/EMA copies
# and everything trained stay in
NOT_CHECKPOINTED = ('text_encoder.', 'rewards.rewards.', 'perceptual.')


def to_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] decoder output -> [0, 1] images (the rewards' convention)."""
    return (images.clamp(-1.0, 1.0) + 1.0) / 2.0


def _not_checkpointed(module, name: str) -> bool:
    # a LoRA policy's base weights are frozen and come from the config too: only its adapters
    # (and their EMA) go into checkpoints
    return name.startswith(NOT_CHECKPOINTED) or (
        module.lora_cfg is not None and name.startswith('policy.') and not is_adapter_key(name))


def _drop_frozen_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if _not_checkpointed(module, k[len(prefix):])]:
        del state_dict[key]
    return state_dict


def _fill_frozen_keys(module, state_dict, prefix, *args):
    # checkpoints do not hold the frozen modules: load them from the current (config) weights
    for sub in NOT_CHECKPOINTED + (('policy.',) if module.lora_cfg is not None else ()):
        owner = module
        for part in sub.rstrip('.').split('.'):
            owner = getattr(owner, part, None)
        if owner is None:
            continue
        for name, value in owner.state_dict().items():
            state_dict.setdefault(prefix + sub + name, value)


@dataclass
class Rollout:
    """One rollout batch: G samples per prompt, decoded and scored (no gradient); N = B * G."""

    cond: Tensor                      # (N, T, ...) prompt encodings, each prompt G times
    mask: Tensor                      # (N, T)
    tokens: Tensor                    # (N, L) sampled codes
    prompts: list                     # N prompts
    images: Tensor                    # (N, 3, H, W) in [-1, 1], by the rollout decoder
    rewards: Tensor                   # (N,) combined (normalised) rewards
    raw_rewards: dict                 # reward name -> (N,) raw scores
    group_size: int                   # G
    topk_logits: Tensor | None = None   # (N, L, k) for LASC
    topk_indices: Tensor | None = None


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive skipped updates (rewards/losses/grads not finite)."""


@MODELS.register_module()
class RankEModel(BaseModel):
    """The RankE co-evolution model: policy + VQ decoder trained with ranking-based RL.

    Args:
        tokenizer: TOKENIZERS config (``pretrained=`` a local file); encoder and codebook frozen.
        policy: POLICIES config of the AR policy.
        text_encoder: TEXT_ENCODERS config; frozen.
        rewards: one REWARDS config or a list; ``reward_weights`` and ``reward_normalize``
            ('none' | 'running' | 'group') combine them (:class:`RewardCombiner`).
        reward_std_eps: with ``reward_normalize='group'``, a group whose reward std is below
            this is flat and normalises to 0; None: the rank loss's ``std_eps`` (GRPO: 1e-4), so
            that the loss's zero-std check still sees the group as flat.
        rank_loss: RANK_LOSSES config for the policy phase (GRPO, listwise, pairwise).
        rank_weights: RANK_WEIGHTS config turning rewards into decoder weights (top-K softmax).
        policy_anchor / decoder_anchor: ANCHORS configs or None.
        perceptual_loss: LOSSES config (LPIPS for real images, ToyPerceptualLoss for the toy).
        discriminator: MODELS config (PatchGAN) or None (no adversarial terms).
        rollout: group_size (G), cfg_scale, cfg_first_n, temperature, top_k, top_p,
            decode_with ('ema' | 'online' | 'base': the decoder that renders rollouts for the
            rewards), seed (the rollout RNG, checkpointed; None: the run's seed).
        policy_cfg: inner_epochs (PPO epochs on one rollout), ema_decay, ema_interval (policy
            steps between EMA updates; ema_decay=None keeps no policy EMA), grad_checkpointing
            (recompute each transformer block of the teacher-forced pass in the backward pass:
            activation memory of one block instead of all, for about one more forward),
            logprobs: the distribution that logp, logp_old and logp_ref are taken under:
            'conditional' (as released: the conditional logits, no CFG, temperature 1, no top-k)
            or 'sampler' (the one the rollout was drawn from: CFG-combined with the rollout's
            cfg_scale / cfg_first_n, then temperature, top-k, top-p), so that the PPO ratio and
            the KL anchor estimate what they claim; it costs a second (unconditional) pass;
            caption_attention ('causal', the sampler's mask; 'bidirectional', the release's
            log-prob mask over the caption block).
        decoder_cfg: ema_decay; l1/perceptual/recon weights; gan_weight with
            adaptive_gan_weight; disc_weight (x VQGAN's halved hinge: 0.5 -> the release's
            0.25), disc_start (decoder steps before the adversarial terms start);
            rank_gan_weight; reward_weight (reward backprop, differentiable rewards only);
            disc_sees_policy (also show policy decodes to the discriminator as fakes; the
            release never does); clamp_policy_decodes (policy decodes and EMA targets clamped
            to [-1, 1] before every term on policy tokens, as released); policy_decode
            ('selected': decode only rollouts with a non-zero rank weight, 'all'); lasc_weight,
            lasc_top_k, lasc_codebook ('normalized' | 'raw', the release's), lasc_logits
            ('conditional', as released | 'sampler'); grad_checkpointing
            (the same for the blocks of the online decoder). Every setting where rankekit and
            the release may differ: :mod:`rankekit.models.release` (``rankekit info release``).
        safety: max_consecutive_skips before the run stops with :class:`NonFiniteError`.
        precision: 'fp32' (default) or 'bf16': bf16 autocast of every forward pass (rollout
            sampling, EMA/reference log-probs and decodes, rewards, both phases); weights,
            gradients and optimizer states stay fp32 (``tools/train.py --amp`` sets 'bf16').
        lora: None (full fine-tuning) or dict(r, alpha, target_modules): train LoRA adapters
            of the policy (``pip install "rankekit[lora]"``, :mod:`rankekit.models.lora`); the
            reference policy is the adapter switched off (no frozen copy), the policy EMA
            averages the adapters only, checkpoints hold the adapters, not the frozen base.
    """

    # tiny random parts (no files); the real toy recipe is configs/ranke/ranke_toy.py
    info_example = dict(
        type='RankEModel',
        tokenizer=dict(type='VQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 2],
                       decoder_ch_mult=[1, 1, 2], z_channels=32, codebook_size=64,
                       codebook_embed_dim=8, image_size=16),
        policy=dict(type='LlamaGenGPT', dim=32, n_layer=1, n_head=2, vocab_size=64,
                    block_size=16, cls_token_num=8, caption_dim=16),
        text_encoder=dict(type='ToyTextEncoder', embed_dim=16, max_length=8, width=16,
                          num_layers=1, num_heads=2),
        rewards=[dict(type='ClipScore', model_name='rankekit-toy-clip', pretrained=None)],
        rank_loss=dict(type='GRPOLoss'),
        policy_anchor=dict(type='KLAnchor', weight=0.05),
        decoder_anchor=dict(type='EMAAnchor', weight=10.0, distance='mse'),
        discriminator=dict(type='PatchGANDiscriminator', ndf=8, n_layers=1),
        rollout=dict(group_size=4))

    def __init__(self, tokenizer: dict, policy: dict, text_encoder: dict, rewards,
                 rank_loss: dict, rank_weights: dict | None = None,
                 policy_anchor: dict | None = None, decoder_anchor: dict | None = None,
                 perceptual_loss: dict | None = None, discriminator: dict | None = None,
                 reward_weights: list | None = None, reward_normalize: str = 'none',
                 reward_std_eps: float | None = None, rollout: dict | None = None,
                 policy_cfg: dict | None = None, decoder_cfg: dict | None = None,
                 safety: dict | None = None, precision: str = 'fp32', lora: dict | None = None,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if precision not in PRECISIONS:
            from rankekit.utils.build import did_you_mean
            raise ValueError(f'model.precision must be one of {tuple(PRECISIONS)}, got '
                             f'{precision!r}.{did_you_mean(str(precision), PRECISIONS)} (fp16 '
                             f'would need loss scaling, which RankE does not do: use bf16)')
        self.precision = precision
        # typed, checked settings (models/settings.py); unknown keys and bad values raise here
        settings = settings_from_config(dict(rollout=rollout, policy_cfg=policy_cfg,
                                             decoder_cfg=decoder_cfg, safety=safety))
        self.rollout_cfg: RolloutCfg = settings['rollout']
        self.policy_cfg: PolicyCfg = settings['policy_cfg']
        self.decoder_cfg: DecoderCfg = settings['decoder_cfg']
        self.safety: SafetyCfg = settings['safety']

        # --- modules that train -----------------------------------------------------------
        self.tokenizer = build_module(TOKENIZERS, tokenizer, 'model.tokenizer')
        self.tokenizer.freeze_encoder()
        self.policy = build_module(POLICIES, policy, 'model.policy')
        self.lora_cfg = None if lora is None else LoraCfg.from_config(lora)
        if self.lora_cfg is not None:
            self.lora_cfg.check()
            add_lora(self.policy, self.lora_cfg)
        self.discriminator = (build_module(MODELS, discriminator, 'model.discriminator')
                              if discriminator else None)
        # --- frozen modules -----------------------------------------------------------------
        self.text_encoder = build_module(TEXT_ENCODERS, text_encoder, 'model.text_encoder')
        self.text_encoder.requires_grad_(False).eval()
        # the rank loss (no weights, no random draws) first: its std_eps is the rewards' default
        self.rank_loss = build_module(RANK_LOSSES, rank_loss, 'model.rank_loss')
        check_number(reward_std_eps, 'model.reward_std_eps', low=0.0, low_open=True,
                     allow_none=True)
        if reward_std_eps is None:  # the loss's flat-group threshold (GRPO's std_eps)
            reward_std_eps = getattr(self.rank_loss, 'std_eps', 1e-4)
        self.rewards = RewardCombiner(rewards, reward_weights, reward_normalize,
                                      group_std_eps=reward_std_eps)
        self.perceptual = (build_module(LOSSES, perceptual_loss, 'model.perceptual_loss')
                           if perceptual_loss else None)
        if self.perceptual is not None:
            self.perceptual.requires_grad_(False).eval()
        self.rank_weights = build_module(
            RANK_WEIGHTS, rank_weights or dict(type='TopKSoftmaxWeights'), 'model.rank_weights')
        self.policy_anchor = (build_module(ANCHORS, policy_anchor, 'model.policy_anchor')
                              if policy_anchor else None)
        self.decoder_anchor = (build_module(ANCHORS, decoder_anchor, 'model.decoder_anchor')
                               if decoder_anchor else None)
        # --- reference and EMA copies (never trained by an optimizer) ------------------------
        keep_ema = self.policy_cfg.ema_decay is not None
        if self.lora_cfg is None:
            self.policy_ref = frozen_copy(self.policy)
            self.policy_ema = frozen_copy(self.policy) if keep_ema else None
        else:  # the adapter switched off is the initial policy; the EMA is the adapters'
            self.policy_ref = None
            self.policy_ema = AdapterEMA(self.policy) if keep_ema else None
        decoder = nn.ModuleDict(self.tokenizer.decoder_modules())
        self.decoder_base = frozen_copy(decoder)
        self.decoder_ema = frozen_copy(decoder)
        self._check_frozen_parts()
        from rankekit.models.validation import check_built_model
        check_built_model(self)  # settings vs the built parts: a clear error before any step
        for anchor, module in ((self.policy_anchor, self.policy), (self.decoder_anchor, decoder)):
            if anchor is not None and hasattr(anchor, 'bind'):
                anchor.bind(module)

        # phases for the next train_step: set by CoEvolutionHook; both on without the hook
        self.phases = dict(policy=True, decoder=True)
        self.register_buffer('policy_steps', torch.zeros((), dtype=torch.long))
        self.register_buffer('decoder_steps', torch.zeros((), dtype=torch.long))
        self.register_buffer('skipped_nonfinite', torch.zeros((), dtype=torch.long))
        self.register_buffer('consecutive_skips', torch.zeros((), dtype=torch.long))
        # the rollout RNG lives in a buffer so that checkpoints carry it (MMEngine's saver
        # ignores nn.Module extra state): resumed runs draw the same rollouts
        # rollout seed None: the run's seed (the Runner seeds torch before building the model),
        # so --seed / randomness.seed changes the rollouts as well
        seed = self.rollout_cfg.seed
        self._rollout_generator = torch.Generator().manual_seed(
            torch.initial_seed() if seed is None else int(seed))
        self.register_buffer('rollout_rng_state', self._rollout_generator.get_state())
        self._register_state_dict_hook(_drop_frozen_keys)
        self._register_load_state_dict_pre_hook(_fill_frozen_keys, with_module=True)

    # ----------------------------------------------------------------------------- structure
    def optim_parts(self) -> dict[str, nn.Module]:
        """Parts that get an optimizer (MultiOptimWrapperConstructor): policy, decoder, disc."""
        parts = dict(policy=self.policy, decoder=nn.ModuleDict(self.tokenizer.decoder_modules()))
        if self.discriminator is not None:
            parts['discriminator'] = self.discriminator
        return parts

    def _check_frozen_parts(self) -> None:
        trainable = {id(p) for p in self.tokenizer.decoder_parameters()}
        for name, param in self.tokenizer.named_parameters():
            if id(param) not in trainable and param.requires_grad:
                raise RuntimeError(f'tokenizer parameter {name} must be frozen in RankE (only '
                                   'decoder and post_quant_conv train)')

    def train(self, mode: bool = True):
        # the policy always runs without dropout so that logp_old, logp and the sampler agree;
        # frozen copies, text encoder, rewards and perceptual net stay in eval mode
        super().train(mode)
        for module in (self.policy, self.policy_ref, self.policy_ema, self.text_encoder,
                       self.rewards, self.perceptual, self.decoder_base, self.decoder_ema):
            if module is not None:
                module.eval()
        # the frozen encoder/quantizer too: in training mode the quantizer would log code usage
        # of this rank's images into a buffer (ranks would drift apart)
        trainable = {id(m) for m in self.tokenizer.decoder_modules().values()}
        for module in self.tokenizer.children():
            if id(module) not in trainable:
                module.eval()
        return self

    # ----------------------------------------------------------------------------- helpers
    def decode(self, codes: Tensor, which: str = 'online') -> Tensor:
        """Codes (N, L) -> images in [-1, 1] with the online, EMA or base decoder."""
        parts = {'online': self.tokenizer.decoder_modules(), 'ema': self.decoder_ema,
                 'base': self.decoder_base}[which]
        side = math.isqrt(codes.shape[1])
        quant = self.tokenizer.quantize.get_codebook_entry(
            codes.reshape(-1), (codes.shape[0], self.tokenizer.codebook_embed_dim, side, side),
            True)
        recompute = which == 'online' and self.decoder_cfg.grad_checkpointing
        with recompute_in_backward(getattr(parts['decoder'], 'blocks', ()), recompute):
            return parts['decoder'](parts['post_quant_conv'](quant))

    def _policy_decode(self, codes: Tensor, which: str) -> Tensor:
        """A decode of policy tokens for the decoder terms: clamped to [-1, 1] as released
        (``decoder_cfg.clamp_policy_decodes``), so out-of-range pixels neither count nor get a
        gradient."""
        images = self.decode(codes, which)
        return images.clamp(-1.0, 1.0) if self.decoder_cfg.clamp_policy_decodes else images

    @property
    def _decoder_dtype(self) -> torch.dtype:
        return next(self.tokenizer.decoder_parameters()).dtype

    def _autocast(self):
        """The precision of forward passes (``model.precision``): bf16 autocast or none."""
        return autocast(self.policy_steps.device, self.precision)

    @contextmanager
    def policy_as(self, which: str):
        """The 'online', 'ema' or 'base' (initial) policy, for the calls made inside.

        Full fine-tuning: the policy or one of its frozen copies. LoRA: always ``self.policy``,
        with the EMA adapter weights swapped in ('ema') or the adapters disabled ('base').
        """
        if which not in DECODE_WITH:
            raise ValueError(f"policy must be one of {DECODE_WITH}, got '{which}'")
        if which == 'ema' and self.policy_ema is None:
            raise ValueError('this model keeps no policy EMA (policy_cfg.ema_decay=None)')
        if self.lora_cfg is None:
            yield {'online': self.policy, 'ema': self.policy_ema, 'base': self.policy_ref}[which]
        elif which == 'base':
            with adapters_disabled(self.policy):
                yield self.policy
        elif which == 'ema':
            with self.policy_ema.applied(self.policy):
                yield self.policy
        else:
            yield self.policy

    def export_policy_state(self, which: str = 'online') -> dict:
        """The policy's weights in its official key layout (LoRA adapters merged in)."""
        with torch.no_grad(), self.policy_as(which) as policy:
            if self.lora_cfg is None:
                return {k: v.detach().clone() for k, v in policy.state_dict().items()}
            return merged_state_dict(policy)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return self.text_encoder(list(prompts))

    @torch.no_grad()
    def generate(self, prompts: list[str], policy: str = 'online', decoder: str = 'ema',
                 generator: torch.Generator | None = None, seeds=None, **sampling) -> dict:
        """Sample one image per prompt with any policy x decoder combination.

        Returns dict(tokens (N, L), images (N, 3, H, W) in [0, 1]). ``sampling`` overrides
        the rollout settings (cfg_scale, temperature, top_k, top_p, cfg_first_n).
        """
        settings = {**self.rollout_cfg.sampling(), **sampling}
        cond, mask = self.encode_prompts(prompts)
        with self._autocast(), self.policy_as(policy) as sampler:
            out = sampler.sample(cond, mask, generator=generator, seeds=seeds, **settings)
            images = self.decode(out.tokens, decoder)
        # in the decoder weights' dtype (fp32), also when autocast decoded them in bf16
        return dict(tokens=out.tokens, images=to_unit_range(images.to(self._decoder_dtype)))

    @contextmanager
    def _requires_grad(self, module: nn.Module | None, flag: bool):
        if module is None:
            yield
            return
        previous = [p.requires_grad for p in module.parameters()]
        module.requires_grad_(flag)
        try:
            yield
        finally:
            for p, prev in zip(module.parameters(), previous):
                p.requires_grad_(prev)

    def _all_ranks_true(self, flag: bool) -> bool:
        """True only if ``flag`` is True on every rank (so all ranks skip together)."""
        return all_ranks_true(flag, self.policy_steps.device)

    def _register_skip(self, part: str, why: str, logs: dict) -> None:
        """Count a skipped ``part`` update ('reward', 'policy', 'decoder', 'discriminator')."""
        self.skipped_nonfinite += 1
        self.consecutive_skips += 1
        logs[f'skipped/{part}'] = torch.ones(())
        limit = int(self.safety.max_consecutive_skips)
        if int(self.consecutive_skips) >= limit:
            raise NonFiniteError(
                f'{int(self.consecutive_skips)} consecutive updates were skipped because '
                f'{why} was not finite (NaN/inf). The weights on disk are the last finite ones. '
                'Check the reward model(s) and learning rates; raise '
                'model.safety.max_consecutive_skips to tolerate more.')

    def _safe_update(self, wrapper, loss: Tensor, what: str, logs: dict,
                     on_grads=None) -> bool:
        """backward + step unless the loss or a gradient is not finite (then nothing changes).

        ``on_grads`` is called with the (finite) gradients in place, before the step.
        """
        params = [p for group in wrapper.optimizer.param_groups for p in group['params']]
        if not self._all_ranks_true(bool(torch.isfinite(loss))):
            wrapper.zero_grad()
            self._register_skip(what, f'the {what} loss', logs)
            return False
        wrapper.backward(wrapper.scale_loss(loss))
        if not wrapper.should_update():
            return True
        # data parallel: the mean gradient over ranks (a non-finite one then reaches every rank)
        average_gradients_(params)
        amp = hasattr(wrapper, 'loss_scaler')  # the AMP scaler already skips inf gradients
        grads_ok = amp or all(torch.isfinite(local_part(p.grad)).all()  # a shard: this rank's
                              for p in params if p.grad is not None)
        if not self._all_ranks_true(bool(grads_ok)):
            wrapper.zero_grad()
            self._register_skip(what, f'a {what} gradient', logs)
            return False
        if on_grads is not None:
            on_grads()
        wrapper.step()
        wrapper.zero_grad()
        return True

    # ----------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """G samples per prompt, decoded and scored; everything the phases need, no gradient."""
        G = int(self.rollout_cfg.group_size)
        cond, mask = self.encode_prompts(prompts)
        cond, mask = cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
        want_topk = self.decoder_cfg.lasc_weight > 0 and self.phases['decoder']
        sampler_topk = want_topk and self.decoder_cfg.lasc_logits == 'sampler'
        # the uniforms of the GLOBAL batch (rank 0's rows first) from the generator every rank
        # shares; this rank draws with its rows: tokens do not depend on how ranks split a batch
        self._rollout_generator.set_state(self.rollout_rng_state.cpu())
        start, stop, total = rank_rows(len(cond), self.policy_steps.device)
        uniforms = draw_uniforms(total, int(self.policy.num_image_tokens),
                                 generator=self._rollout_generator, device=cond.device)
        group_prompts = [p for p in prompts for _ in range(G)]
        with self._autocast():
            out = self.policy.sample(
                cond, mask, cfg_scale=self.rollout_cfg.cfg_scale,
                cfg_first_n=self.rollout_cfg.cfg_first_n,
                temperature=self.rollout_cfg.temperature, top_k=self.rollout_cfg.top_k,
                top_p=self.rollout_cfg.top_p, uniforms=uniforms[start:stop],
                return_topk_logits=self.decoder_cfg.lasc_top_k if sampler_topk else 0)
            topk_logits, topk_indices = out.topk_logits, out.topk_indices
            if want_topk and not sampler_topk:  # the conditional teacher-forced logits
                logits = self.policy(cond, mask, out.tokens, **self._caption_kwargs())
                topk_logits, topk_indices = logits.topk(self.decoder_cfg.lasc_top_k, dim=-1)
            images = self.decode(out.tokens, self.rollout_cfg.decode_with)
            rewards, raw = self.rewards.score(to_unit_range(images), group_prompts,
                                              group_size=G)
        self.rollout_rng_state.copy_(self._rollout_generator.get_state())
        return Rollout(cond=cond, mask=mask, tokens=out.tokens, prompts=group_prompts,
                       images=images, rewards=rewards, raw_rewards=raw, group_size=G,
                       topk_logits=topk_logits, topk_indices=topk_indices)

    def _reward_logs(self, ro: Rollout) -> dict:
        logs = {}
        for name, values in ro.raw_rewards.items():
            logs[f'reward/{name}/mean'] = values.mean()
            logs[f'reward/{name}/std'] = values.std(unbiased=False)
        grouped = ro.rewards.view(-1, ro.group_size)
        logs['reward/mean'] = ro.rewards.mean()
        logs['reward/std'] = ro.rewards.std(unbiased=False)
        eps = getattr(self.rank_loss, 'std_eps', 1e-4)
        unbiased = getattr(self.rank_loss, 'std', 'population') == 'unbiased'  # the loss's flatness
        logs['reward/frac_zero_std'] = (grouped.std(-1, unbiased=unbiased) < eps).float().mean()
        return logs

    # ----------------------------------------------------------------------------- phases
    def _log_probs(self, policy: nn.Module, ro: Rollout) -> Tensor:
        """Token log-probs (N, L) of the rollout under ``policy``: conditional only (as
        released) or under the sampling distribution (``policy_cfg.logprobs='sampler'``)."""
        if self.policy_cfg.logprobs == 'conditional':
            return policy.log_probs(ro.cond, ro.mask, ro.tokens, **self._caption_kwargs())
        return policy.sampler_log_probs(ro.cond, ro.mask, ro.tokens,
                                        **self.rollout_cfg.sampling())

    def _caption_kwargs(self) -> dict:
        """The caption mask of conditional scoring (``policy_cfg.caption_attention``), as the
        keyword only policies that support it get (the default needs none)."""
        attention = self.policy_cfg.caption_attention
        return {} if attention == 'causal' else dict(caption_attention=attention)

    def policy_step(self, ro: Rollout, wrapper) -> dict:
        """Rank loss + policy anchor on one rollout, ``inner_epochs`` times; returns its logs."""
        logs: dict = {}
        anchor = self.policy_anchor
        # the frozen initial policy: KL logging, anchors, 'ref' losses
        with torch.no_grad(), self._autocast():
            with self.policy_as('base') as reference:
                logp_ref = self._log_probs(reference, ro)
            anchor_ref = logp_ref
            if anchor is not None and anchor.uses == 'outputs' and anchor.reference == 'ema':
                with self.policy_as('ema') as ema:
                    anchor_ref = self._log_probs(ema, ro)
        logp_old = None
        for _ in range(int(self.policy_cfg.inner_epochs)):
            with wrapper.optim_context(self), self._autocast(), recompute_in_backward(
                    getattr(self.policy, 'blocks', ()), self.policy_cfg.grad_checkpointing):
                logp = self._log_probs(self.policy, ro)
                if logp_old is None:  # same weights, same mode: the behaviour log-probs
                    logp_old = logp.detach()
                out = self.rank_loss(logp, logp_old, ro.rewards, ro.group_size,
                                     logp_ref=logp_ref)
                loss = out['loss']
                if anchor is not None:
                    if anchor.uses == 'params':
                        reference = self.policy_ref if anchor.reference == 'initial' \
                            else self.policy_ema
                        penalty = anchor(self.policy, reference, kind='policy')
                    else:
                        penalty = anchor(logp, anchor_ref, kind='policy')
                    loss = loss + anchor.weight * penalty
                    logs['policy/anchor'] = penalty.detach()
            observe = getattr(anchor, 'observe_gradients', None)
            if not self._safe_update(wrapper, loss, 'policy', logs,
                                     on_grads=observe and (lambda: observe(self.policy))):
                return logs
        self.policy_steps += 1
        with torch.no_grad():
            diff = logp.detach() - logp_ref
            logs['policy/kl'] = (torch.expm1(-diff) + diff).mean()  # k3, >= 0
        logs['policy/loss'] = out['loss'].detach()
        for key, value in out.items():
            if key != 'loss':
                logs[f'policy/{key}'] = value
        interval = int(self.policy_cfg.ema_interval)
        if self.policy_ema is not None and int(self.policy_steps) % interval == 0:
            decay = float(self.policy_cfg.ema_decay)
            if self.lora_cfg is None:
                ema_update_(self.policy_ema, self.policy, decay)
            else:
                self.policy_ema.update_(self.policy, decay)
        return logs

    def _adaptive_gan_weight(self, nll: Tensor, g_loss: Tensor) -> Tensor:
        """VQGAN's balance: ||grad_last(nll)|| / ||grad_last(g_loss)||, clamped to [0, 1e4].

        Data parallel: the norms of the rank-mean gradients, i.e. of the global batch's losses
        (the same weight on every rank, as in one process on the whole batch).
        """
        return adaptive_gan_weight(nll, g_loss, self.tokenizer.decoder.last_layer,
                                   average_tensors_)

    def discriminator_step(self, real: Tensor, fake: Tensor, wrapper) -> dict:
        """Hinge loss on real images vs ``fake``; returns its logs."""
        logs: dict = {}
        with self._requires_grad(self.discriminator, True), wrapper.optim_context(self), \
                self._autocast():
            logits_real = self.discriminator(real)
            logits_fake = self.discriminator(fake.detach())
            loss = self.decoder_cfg.disc_weight * hinge_d_loss(logits_real, logits_fake)
        if self._safe_update(wrapper, loss, 'discriminator', logs):
            logs['disc/loss'] = loss.detach()
            logs['disc/real'] = logits_real.detach().mean()
            logs['disc/fake'] = logits_fake.detach().mean()
        return logs

    def decoder_step(self, ro: Rollout, real: Tensor, optim_wrapper) -> dict:
        """Discriminator step, then the decoder's reconstruction + rank-weighted terms; returns
        the logs of both."""
        logs: dict = {}
        cfg = self.decoder_cfg
        adversarial = (self.discriminator is not None
                       and int(self.decoder_steps) >= int(cfg.disc_start))
        weights = self.rank_weights(ro.rewards, ro.group_size)
        if cfg.policy_decode == 'selected':
            chosen = (weights > 0).nonzero(as_tuple=True)[0]
        else:
            chosen = torch.arange(len(weights), device=weights.device)
        w = weights[chosen]
        needs_policy_decode = (
            (adversarial and cfg.rank_gan_weight > 0) or cfg.lasc_weight > 0
            or (cfg.reward_weight > 0 and self.rewards.any_differentiable)
            or self.decoder_anchor is not None or (adversarial and cfg.disc_sees_policy))
        gt_codes = self.tokenizer.images_to_codes(real)
        wrapper = optim_wrapper['decoder']
        # decoded once: the discriminator step (which leaves the decoder unchanged) sees it
        # detached, the decoder step keeps its graph
        with wrapper.optim_context(self), self._autocast():
            recon = self.decode(gt_codes, 'online')

        if adversarial:
            fakes = [recon.detach()]
            if cfg.disc_sees_policy:
                with torch.no_grad(), self._autocast():
                    fakes.append(self._policy_decode(ro.tokens[chosen], 'online'))
            logs.update(self.discriminator_step(real, torch.cat(fakes),
                                                optim_wrapper['discriminator']))

        with wrapper.optim_context(self), self._autocast(), \
                self._requires_grad(self.discriminator, False):
            l1 = (recon - real).abs().mean()
            nll = cfg.l1_weight * l1
            logs['decoder/l1'] = l1.detach()
            if self.perceptual is not None and cfg.perceptual_weight > 0:
                perceptual = self.perceptual(recon, real).mean()
                nll = nll + cfg.perceptual_weight * perceptual
                logs['decoder/perceptual'] = perceptual.detach()
            loss = cfg.recon_weight * nll
            if adversarial and cfg.gan_weight > 0:
                g_loss = -self.discriminator(recon).mean()
                adaptive = (self._adaptive_gan_weight(nll, g_loss) if cfg.adaptive_gan_weight
                            else torch.ones((), device=recon.device))
                loss = loss + cfg.recon_weight * cfg.gan_weight * adaptive * g_loss
                logs['decoder/gan'] = g_loss.detach()
                logs['decoder/adaptive_weight'] = adaptive
            if needs_policy_decode and len(chosen):
                terms, term_logs = self._policy_token_terms(ro, chosen, w, adversarial)
                loss = loss + terms
                logs.update(term_logs)
            logs['decoder/loss'] = loss.detach()
        # a Fisher-weighted L2 anchor estimates its Fisher from this module's own gradients
        observe = getattr(self.decoder_anchor, 'observe_gradients', None)
        parts = nn.ModuleDict(self.tokenizer.decoder_modules())
        if self._safe_update(wrapper, loss, 'decoder', logs,
                             on_grads=observe and (lambda: observe(parts))):
            self.decoder_steps += 1
            ema_update_(self.decoder_ema, parts, float(cfg.ema_decay))
        return logs

    def _policy_token_terms(self, ro: Rollout, chosen: Tensor, w: Tensor,
                            adversarial: bool) -> tuple[Tensor, dict]:
        """The decoder terms on policy tokens (rank-GAN, reward backprop, anchor, LASC) and
        their logs."""
        logs: dict = {}
        cfg = self.decoder_cfg
        tokens = ro.tokens[chosen]
        images = self._policy_decode(tokens, 'online')
        total = images.new_zeros(())
        if adversarial and cfg.rank_gan_weight > 0:
            rank_gan = rank_weighted_gan_loss(w, self.discriminator(images))
            total = total + cfg.rank_gan_weight * cfg.gan_weight * rank_gan
            logs['decoder/rank_gan'] = rank_gan.detach()
        if cfg.reward_weight > 0:
            prompts = [ro.prompts[i] for i in chosen.tolist()]
            stats = self.rewards.group_statistics(ro.raw_rewards, ro.group_size, chosen)
            # at least one reward is differentiable (checked at build time); others are warned
            # about once: they rank the rollouts but give no gradient
            score = self.rewards.differentiable_score(to_unit_range(images), prompts, stats)
            self.rewards.warn_non_differentiable()
            reward_term = rank_weighted_reward_loss(w, score)
            total = total + cfg.reward_weight * reward_term
            logs['decoder/reward'] = (-reward_term).detach()
        if self.decoder_anchor is not None:
            anchor = self.decoder_anchor
            if anchor.uses == 'params':
                penalty = anchor(nn.ModuleDict(self.tokenizer.decoder_modules()),
                                 self.decoder_base if anchor.reference == 'initial'
                                 else self.decoder_ema, kind='decoder')
            else:
                with torch.no_grad():
                    if anchor.reference == 'ema' and self.rollout_cfg.decode_with == 'ema':
                        reference = ro.images[chosen]  # already decoded by the EMA decoder
                        if cfg.clamp_policy_decodes:
                            reference = reference.clamp(-1.0, 1.0)
                    else:
                        which = 'ema' if anchor.reference == 'ema' else 'base'
                        reference = self._policy_decode(tokens, which)
                penalty = anchor(images, reference, kind='decoder', perceptual=self.perceptual)
            total = total + anchor.weight * penalty
            logs['decoder/anchor'] = penalty.detach()
        if cfg.lasc_weight > 0 and ro.topk_logits is not None:
            lasc = self._lasc(ro, chosen, images)
            total = total + cfg.lasc_weight * lasc
            logs['decoder/lasc'] = lasc.detach()
        return total, logs

    def _lasc(self, ro: Rollout, chosen: Tensor, hard_images: Tensor) -> Tensor:
        """LASC: decode the soft latent of the top-k logits, match the hard decode."""
        soft = soft_code_latents(ro.topk_logits[chosen], ro.topk_indices[chosen],
                                 self.tokenizer.quantize.embedding.weight,
                                 normalize=self.decoder_cfg.lasc_codebook == 'normalized')
        parts = self.tokenizer.decoder_modules()
        return lasc_loss(parts['decoder'](parts['post_quant_conv'](soft)), hard_images)

    # ----------------------------------------------------------------------------- mmengine API
    def train_step(self, data, optim_wrapper: OptimWrapperDict) -> dict:
        data = self.data_preprocessor(data, True)
        prompts = list(data['caption'])
        logs: dict = {}
        run_policy, run_decoder = self.phases['policy'], self.phases['decoder']
        logs['phase'] = torch.tensor(float(run_policy) + 2.0 * float(run_decoder))
        if not (run_policy or run_decoder):
            return logs
        ro = self.rollout(prompts)
        logs.update(self._reward_logs(ro))
        if not self._all_ranks_true(bool(torch.isfinite(ro.rewards).all())):
            self._register_skip('reward', self.rewards.nonfinite_summary() or 'a reward', logs)
            # non-finite statistics would poison the smoothed log: report the skip only
            return dict(phase=logs['phase'], skipped_nonfinite=self.skipped_nonfinite.float())
        skips_before = int(self.skipped_nonfinite)
        if run_policy:
            logs.update(self.policy_step(ro, optim_wrapper['policy']))
        if run_decoder:
            # the decoder weights' dtype (under autocast the rollout images are bf16)
            real = data['image'].to(self._decoder_dtype) * 2.0 - 1.0
            logs.update(self.decoder_step(ro, real, optim_wrapper))
        if int(self.skipped_nonfinite) == skips_before:
            self.consecutive_skips.zero_()
        logs['skipped_nonfinite'] = self.skipped_nonfinite.float()
        if hasattr(self.rank_weights, 'tau'):
            logs['tau'] = torch.tensor(float(self.rank_weights.tau))
        return logs

    def forward(self, inputs=None, data_samples=None, mode: str = 'predict', **kwargs):
        """``predict``: one sample per caption of ``inputs`` (a list of prompts or a batch dict)
        with the online policy and the EMA decoder; returns a list of dicts."""
        prompts = inputs['caption'] if isinstance(inputs, dict) else inputs
        if mode != 'predict':
            raise ValueError(f"RankEModel.forward supports mode='predict' only, got '{mode}'")
        out = self.generate(list(prompts), **kwargs)
        return [dict(caption=p, tokens=t, image=img)
                for p, t, img in zip(prompts, out['tokens'], out['images'])]

    def val_step(self, data):
        data = self.data_preprocessor(data, False)
        return self(data, mode='predict')

    def test_step(self, data):
        return self.val_step(data)
