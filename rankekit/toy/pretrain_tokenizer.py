"""Pretraining the toy VQ tokenizer (the same :class:`~rankekit.tokenizers.VQModel` as LlamaGen's).

Plain L1 training of a small L2-normalised VQ collapses onto one code (seen in the first toy
runs). Three standard remedies, all in :class:`VQPretrainModel`:

1. warm-up without quantisation: the decoder first learns from the normalised latent itself;
2. codebook initialised from encoder outputs (spherical k-means over recent latents) at the first
   quantised step;
3. dead-code reset: every ``reset_interval`` iterations, codes no latent chose since the last
   reset are moved onto recent latents, drawn in proportion to their quantisation error.

A second stage trains the decoder the way LlamaGen's VQ was trained: L1 + perceptual + adaptive
hinge GAN against a PatchGAN discriminator (``discriminator=``, ``perceptual_loss=``), with the
encoder and codebook frozen (``train_parts='decoder'``) so that the codes, and every policy
trained on them, stay valid. Its objective is literally RankE's decoder-phase reconstruction
objective (the same functions of :mod:`rankekit.losses.gan`).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel

from torch import nn

from rankekit.losses.gan import adaptive_gan_weight, hinge_d_loss
from rankekit.registry import LOSSES, MODELS, TOKENIZERS
from rankekit.tokenizers.vq_model import VQModel
from rankekit.utils.build import build_module

def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, shape (B,), of (B, C, H, W) images in a ``data_range`` range."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10))


@torch.no_grad()
def spherical_kmeans(points: torch.Tensor, k: int, iters: int = 10,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """k unit centres of unit ``points`` (N, D) by cosine k-means; empty clusters are re-seeded."""
    n = points.shape[0]
    pick = (torch.randperm(n, generator=generator)[:k] if n >= k
            else torch.randint(n, (k,), generator=generator))
    centres = points[pick].clone()
    for _ in range(iters):
        assign = (points @ centres.t()).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        sums[empty] = points[torch.randint(n, (int(empty.sum()),), generator=generator)]
        centres = F.normalize(sums, dim=-1)
    return centres


@MODELS.register_module()
class VQPretrainModel(BaseModel):
    """Trains a small VQModel on toy images: warm-up, data-initialised codebook, dead-code reset.

    Batches are dicts with ``image`` (B, 3, H, W) in [0, 1] (other keys such as ``caption`` are
    ignored); a bare image tensor is accepted too. Logged: ``loss/recon``, ``loss/vq``, ``psnr``
    (dB, on [0, 1] images), ``codebook/usage`` (fraction of the codebook chosen in this batch; 0
    during warm-up) and ``codebook/reset`` (codes moved at this iteration).

    Args:
        tokenizer: a VQModel config (``type`` optional) or module; the toy one is
            ``toy_tokenizer`` in configs/_base_/models/toy_backbone.py.
        l1_weight / l2_weight: weights of the L1 and squared-error reconstruction terms.
        vq_weight: weight of codebook + commitment (+ entropy) losses of the quantiser.
        warmup_iters: iterations without quantisation at the start.
        codebook_init: 'kmeans' (spherical k-means over recent latents), 'random' (random recent
            latents) or None (keep the quantiser's own init).
        kmeans_iters: k-means iterations of the codebook initialisation.
        reset_interval: iterations between dead-code resets after warm-up (0 disables).
        reset_noise: std of the noise added to a reset code (keeps copies of one latent apart).
        reset_by_error: draw the latents that dead codes move to with probability proportional
            to their quantisation error (True) rather than uniformly.
        latent_buffer_size: how many recent latent vectors are kept to draw from.
        perceptual_loss: LOSSES config of a perceptual distance (e.g. ``ToyPerceptualLoss``),
            weighted by ``perceptual_weight``; None: none.
        discriminator: MODELS config of an image discriminator (``PatchGANDiscriminator``); with
            one, ``train_step`` is GAN-style and needs an ``OptimWrapperDict`` with the parts
            ``tokenizer`` and ``discriminator`` (``MultiOptimWrapperConstructor``).
        gan_weight / disc_weight / disc_start: generator hinge-loss weight (times the adaptive
            VQGAN balance when ``adaptive_gan_weight``), discriminator-loss weight (times VQGAN's
            halved hinge, :func:`~rankekit.losses.gan.hinge_d_loss`), and the iteration the
            adversarial terms start at.
        train_parts: 'all' (encoder, codebook and decoder) or 'decoder' (decoder and
            post_quant_conv only, as RankE trains them; the codes never change).
    """

    info_example = dict(type='VQPretrainModel', warmup_iters=1, reset_interval=1,
                        latent_buffer_size=256,
                        tokenizer=dict(type='VQModel', ch=32, num_res_blocks=1,
                                       encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                                       z_channels=16, codebook_size=16, codebook_embed_dim=4,
                                       image_size=16))

    def __init__(self, tokenizer: dict | VQModel, l1_weight: float = 1.0,
                 l2_weight: float = 1.0, vq_weight: float = 1.0, warmup_iters: int = 100,
                 codebook_init: str | None = 'kmeans', kmeans_iters: int = 10,
                 reset_interval: int = 20, reset_noise: float = 0.01,
                 reset_by_error: bool = True,
                 latent_buffer_size: int = 8192, seed: int = 0,
                 perceptual_loss: dict | None = None, perceptual_weight: float = 1.0,
                 discriminator: dict | None = None, gan_weight: float = 0.5,
                 disc_weight: float = 1.0, disc_start: int = 0,
                 adaptive_gan_weight: bool = True, train_parts: str = 'all',
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if codebook_init not in ('kmeans', 'random', None):
            raise ValueError(f"VQPretrainModel: codebook_init must be 'kmeans', 'random' or None, "
                             f'got {codebook_init!r}')
        if warmup_iters < 0 or reset_interval < 0 or latent_buffer_size < 1:
            raise ValueError('VQPretrainModel: warmup_iters and reset_interval must be >= 0 and '
                             f'latent_buffer_size >= 1, got {warmup_iters}, {reset_interval}, '
                             f'{latent_buffer_size}')
        if train_parts not in ('all', 'decoder'):
            raise ValueError(f"VQPretrainModel: train_parts must be 'all' or 'decoder', got "
                             f'{train_parts!r}')
        if train_parts == 'decoder' and (warmup_iters or reset_interval or codebook_init):
            raise ValueError("VQPretrainModel: train_parts='decoder' keeps the codebook fixed; set "
                             'warmup_iters=0, reset_interval=0 and codebook_init=None (got '
                             f'{warmup_iters}, {reset_interval}, {codebook_init!r})')
        if isinstance(tokenizer, dict):  # 'type' may be left out: VQModel
            tokenizer = TOKENIZERS.build({'type': 'VQModel', **tokenizer})
        self.tokenizer = tokenizer
        if not isinstance(self.tokenizer, VQModel):
            raise TypeError(f'VQPretrainModel trains a VQModel, got '
                            f'{type(self.tokenizer).__name__}')
        self.l1_weight, self.l2_weight, self.vq_weight = l1_weight, l2_weight, vq_weight
        self.warmup_iters, self.codebook_init = warmup_iters, codebook_init
        self.kmeans_iters = kmeans_iters
        self.reset_interval, self.reset_noise = reset_interval, reset_noise
        self.reset_by_error = reset_by_error
        self.generator = torch.Generator().manual_seed(seed)
        self.train_parts = train_parts
        if train_parts == 'decoder':
            self.tokenizer.freeze_encoder()
        self.perceptual = (build_module(LOSSES, perceptual_loss, 'model.perceptual_loss')
                           if perceptual_loss else None)
        if self.perceptual is not None:
            self.perceptual.requires_grad_(False).eval()
        self.perceptual_weight = perceptual_weight
        self.discriminator = (build_module(MODELS, discriminator, 'model.discriminator')
                              if discriminator else None)
        self.gan_weight, self.disc_weight, self.disc_start = gan_weight, disc_weight, disc_start
        self.adaptive_gan_weight = adaptive_gan_weight

        n_codes, dim = self.tokenizer.codebook_size, self.tokenizer.codebook_embed_dim
        # persistent, so that a resumed run continues the schedule
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))
        self.register_buffer('codebook_ready', torch.zeros((), dtype=torch.bool))
        self.register_buffer('code_hits', torch.zeros(n_codes, dtype=torch.long))
        # recent (normalised) latents: a ring, refilled after a resume
        self.register_buffer('latents', torch.zeros(latent_buffer_size, dim), persistent=False)
        self.latents_seen = 0
        self.num_resets = 0  # total codes moved so far (this process)

    # ---- structure ---------------------------------------------------------------------------
    def optim_parts(self) -> dict[str, nn.Module]:
        """Parts with an optimizer each (MultiOptimWrapperConstructor): ``tokenizer`` (all of it,
        or its decoder + post_quant_conv) and, with one, ``discriminator``."""
        parts = dict(tokenizer=nn.ModuleDict(self.tokenizer.decoder_modules())
                     if self.train_parts == 'decoder' else self.tokenizer)
        if self.discriminator is not None:
            parts['discriminator'] = self.discriminator
        return parts

    def train(self, mode: bool = True) -> 'VQPretrainModel':
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()
        if self.train_parts == 'decoder':  # frozen: no quantiser bookkeeping or losses
            for module in (self.tokenizer.encoder, self.tokenizer.quant_conv,
                           self.tokenizer.quantize):
                module.eval()
        return self

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def quantizing(self) -> bool:
        """False during warm-up (the decoder sees the continuous latent)."""
        return int(self.iteration) >= self.warmup_iters

    @staticmethod
    def _to_model_range(image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError('VQPretrainModel expects batch["image"] as a float tensor '
                             f'(B, 3, H, W) in [0, 1], got {got}')
        return image.float() * 2 - 1  # [0, 1] -> the tokenizer's [-1, 1]

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        f = self.tokenizer.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f'image size {tuple(x.shape[-2:])} is not a multiple of the '
                             f'tokenizer downsample factor {f}')
        h = self.tokenizer.encode_latent(x)
        return F.normalize(h, dim=1) if self.tokenizer.quantize.l2_norm else h

    @torch.no_grad()
    def _remember(self, z: torch.Tensor) -> None:
        rows = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        size = self.latents.shape[0]
        if rows.shape[0] > size:  # keep a random subset rather than the last rows only
            rows = rows[torch.randperm(rows.shape[0], generator=self.generator)[:size]]
        pos = (self.latents_seen + torch.arange(rows.shape[0])) % size
        self.latents[pos.to(self.latents.device)] = rows.to(self.latents.dtype)
        self.latents_seen += rows.shape[0]

    def _recent_latents(self, n: int, by_error: bool = False) -> torch.Tensor:
        """n recent latents, uniformly or with probability ~ their quantisation error."""
        stored = self.latents[:min(self.latents_seen, self.latents.shape[0])]
        if not by_error:
            return stored[torch.randint(stored.shape[0], (n,), generator=self.generator)]
        codebook = self.tokenizer.quantize.codebook().to(stored)
        error = torch.cdist(stored, codebook).min(dim=1).values.pow(2).cpu()
        # well-represented latents (the dark background, most of every image) would otherwise
        # attract most resets and split one visual state over many near-duplicate codes, which
        # makes the token stream needlessly hard for the AR policy to model
        index = torch.multinomial(error.clamp_min(1e-12), n, replacement=True,
                                  generator=self.generator)
        return stored[index.to(stored.device)]

    @torch.no_grad()
    def init_codebook(self) -> None:
        """Set the codebook from recent latents (``codebook_init``), at the first quantised step."""
        weight = self.tokenizer.quantize.embedding.weight
        if self.codebook_init == 'kmeans':
            stored = self.latents[:min(self.latents_seen, self.latents.shape[0])]
            points = F.normalize(stored, dim=-1) if self.tokenizer.quantize.l2_norm else stored
            centres = spherical_kmeans(points.cpu(), weight.shape[0], self.kmeans_iters,
                                       self.generator)
        else:
            centres = self._recent_latents(weight.shape[0]).cpu()
        weight.copy_(centres.to(weight))
        self.codebook_ready.fill_(True)
        self.code_hits.zero_()

    @torch.no_grad()
    def reset_dead_codes(self) -> int:
        """Move codes unused since the last reset onto random recent latents; returns how many."""
        dead = (self.code_hits == 0).nonzero().flatten()
        if len(dead) and self.latents_seen:
            weight = self.tokenizer.quantize.embedding.weight
            fresh = self._recent_latents(len(dead), by_error=self.reset_by_error).to(weight)
            fresh = fresh + self.reset_noise * torch.randn(
                fresh.shape, generator=self.generator).to(weight)
            weight[dead.to(weight.device)] = fresh
        self.code_hits.zero_()
        self.num_resets += len(dead)
        return len(dead)

    # ---- mmengine API ------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, mode: str = 'tensor', **unused):
        """Images (B, 3, H, W) in [0, 1] -> by ``mode``: 'loss' a loss dict, 'predict' a list of
        per-image dicts (``recon``, ``image`` in [0, 1], ``codes``, ``psnr``), 'tensor' the
        reconstructions in [0, 1]."""
        x = self._to_model_range(image)
        if mode == 'loss':
            return self.loss(x)
        with torch.no_grad() if mode == 'predict' else torch.enable_grad():
            quant, _, (_, _, codes) = self.tokenizer.encode(x)
            recon = self.tokenizer.decode(quant)
        recon01 = ((recon.clamp(-1, 1) + 1) / 2)
        if mode == 'tensor':
            return recon01
        if mode == 'predict':
            codes = codes.view(x.shape[0], -1)
            scores = psnr(recon01, image.float())
            return [dict(recon=r, image=i, codes=c, psnr=s)
                    for r, i, c, s in zip(recon01, image.float(), codes, scores)]
        raise ValueError(f"VQPretrainModel.forward: mode must be 'loss', 'predict' or 'tensor', "
                         f'got {mode!r}')

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction (+ perceptual) + quantiser losses for images ``x`` in [-1, 1]."""
        return self._losses_and_recon(x)[0]

    def _losses_and_recon(self, x: torch.Tensor) -> tuple[OrderedDict, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_parts == 'all'):
            z = self._latent(x)
        if self.training:
            self._remember(z)
        quantizer = self.tokenizer.quantize
        if not self.quantizing:
            quant, vq_loss, usage = z, z.new_zeros(()), 0.0
        else:
            if self.training and self.codebook_init and not bool(self.codebook_ready):
                self.init_codebook()
            quant, (codebook_loss, commit_loss, ent_loss, _), (_, _, codes) = quantizer(z)
            # distinct codes in this batch (the official 65536-index ring over-counts codes that
            # were hit once just after a reset)
            usage = len(torch.unique(codes)) / quantizer.n_e
            if codebook_loss is None:  # quantiser in eval mode: no training losses
                vq_loss = z.new_zeros(())
            else:
                vq_loss = codebook_loss + commit_loss + ent_loss
            if self.training:
                self.code_hits += torch.bincount(codes, minlength=self.code_hits.numel())
        recon = self.tokenizer.decode(quant)
        recon_loss = self.l1_weight * (recon - x).abs().mean()
        if self.l2_weight:
            recon_loss = recon_loss + self.l2_weight * (recon - x).pow(2).mean()
        losses = OrderedDict([('loss/recon', recon_loss)])
        if self.perceptual is not None and self.perceptual_weight:
            losses['loss/perceptual'] = self.perceptual_weight * self.perceptual(recon, x).mean()
        losses['loss/vq'] = self.vq_weight * vq_loss
        with torch.no_grad():
            losses['psnr'] = psnr((recon.clamp(-1, 1) + 1) / 2, (x + 1) / 2).mean()
        losses['codebook/usage'] = torch.tensor(float(usage))
        return losses, recon

    def _gan_train_step(self, data: dict, optim_wrapper) -> dict[str, torch.Tensor]:
        """Discriminator step (real vs reconstructions), then the tokenizer step with the
        adaptive hinge GAN term: RankE's decoder-phase reconstruction objective."""
        data = self.data_preprocessor(data, True)
        x = self._to_model_range(data['image'])
        gen, disc = optim_wrapper['tokenizer'], optim_wrapper['discriminator']
        with gen.optim_context(self):
            losses, recon = self._losses_and_recon(x)
        logs = OrderedDict((k, v.detach()) for k, v in losses.items())
        nll = losses['loss/recon'] + losses.get('loss/perceptual', 0.0)
        total = nll + losses['loss/vq']
        if int(self.iteration) >= self.disc_start:
            with disc.optim_context(self.discriminator):
                d_loss = self.disc_weight * hinge_d_loss(self.discriminator(x),
                                                         self.discriminator(recon.detach()))
            disc.update_params(d_loss)
            logs['loss/disc'] = d_loss.detach()
            self.discriminator.requires_grad_(False)
            try:
                with gen.optim_context(self):
                    g_loss = -self.discriminator(recon).mean()
                    weight = (adaptive_gan_weight(nll, g_loss, self.tokenizer.decoder.last_layer)
                              if self.adaptive_gan_weight else torch.ones(()))
                    total = total + self.gan_weight * weight * g_loss
            finally:
                self.discriminator.requires_grad_(True)
            logs['loss/gan'] = g_loss.detach()
            logs['gan/adaptive_weight'] = weight
        gen.update_params(total)
        logs['loss'] = total.detach()
        return logs

    def train_step(self, data, optim_wrapper) -> dict[str, torch.Tensor]:
        """One optimisation step, then the codebook schedule (dead-code reset)."""
        if isinstance(data, torch.Tensor):
            data = dict(image=data)
        if self.discriminator is None:
            log_vars = super().train_step(data, optim_wrapper)
        else:
            log_vars = self._gan_train_step(data, optim_wrapper)
        self.iteration += 1
        step = int(self.iteration) - self.warmup_iters  # quantised steps done
        reset = 0
        if self.reset_interval and step > 0 and step % self.reset_interval == 0:
            reset = self.reset_dead_codes()
        log_vars['codebook/reset'] = torch.tensor(float(reset))
        return log_vars

    def save_tokenizer(self, path: str) -> None:
        """Write the tokenizer alone in the official layout ``{"model": state_dict}``."""
        torch.save({'model': self.tokenizer.state_dict()}, path)


@torch.no_grad()
def evaluate_tokenizer(model: VQModel | VQPretrainModel, images: torch.Tensor,
                       batch_size: int = 256) -> dict[str, float]:
    """Reconstruction quality of a VQ tokenizer on ``images`` (N, 3, H, W) in [0, 1].

    Returns ``psnr`` (mean per-image dB on clamped [0, 1] reconstructions), ``usage`` (fraction
    of codebook entries chosen at least once over these images) and ``perplexity`` of the code
    histogram (exp of its entropy; the number of codes "effectively" used).
    """
    tokenizer = model.tokenizer if isinstance(model, VQPretrainModel) else model
    was_training = tokenizer.training
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    scores, counts = [], torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device).float()
            codes = tokenizer.images_to_codes(batch * 2 - 1)
            recon = tokenizer.codes_to_images(codes)
            scores.append(psnr((recon.clamp(-1, 1) + 1) / 2, batch).cpu())
            counts += torch.bincount(codes.flatten().cpu(), minlength=counts.numel())
    finally:
        tokenizer.train(was_training)
    p = counts.float() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return dict(psnr=torch.cat(scores).mean().item(), usage=(counts > 0).float().mean().item(),
                perplexity=math.exp(entropy.item()))
