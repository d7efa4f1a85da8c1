"""LlamaGen-compatible VQ tokenizer: CNN encoder -> L2-normalised codebook -> CNN decoder.

Re-implemented from the architecture of LlamaGen's ``tokenizer/tokenizer_image/vq_model.py``
(FoundationVision/LlamaGen @ ce98ec4), with exactly the same ``state_dict`` key names so that the
official checkpoints (``vq_ds16_t2i.pt``, Janus's ``gen_vision_model``) load strictly. Two widths
the official code hard-codes (``ch=128``, ``num_res_blocks=2``) are config keys here, so that the
toy world can use the same class at a laptop size.

Conventions (official): images are in [-1, 1]; codes are flattened row-major over (b, h, w);
both the latent and the codebook are L2-normalised at use time (stored rows need not be unit).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import TOKENIZERS

# the official code keeps the last 65536 code indices for its usage statistic
CODEBOOK_USAGE_WINDOW = 65536
NORM_GROUPS = 32


@dataclass
class VQConfig:
    """Constructor arguments of :class:`VQModel`: LlamaGen's ModelArgs + ch, num_res_blocks."""
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: Sequence[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: Sequence[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2


#: official presets (``VQ_models`` in LlamaGen); explicit kwargs override them
VQ_ARCHS = {
    'VQ-16': dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]),
    'VQ-8': dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
}


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, swish, conv3x3) x 2, 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        # (b, c, h, w) -> (b, hw, c); the softmax scale 1/sqrt(c) is SDPA's default
        q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 conv3x3 after zero-padding right and bottom only."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


def _level(res: Sequence[nn.Module], attn: Sequence[nn.Module]) -> nn.Module:
    # plain containers named like the official ones (state_dict keys conv_blocks.i.res.j...)
    level = nn.Module()
    level.res, level.attn = nn.ModuleList(res), nn.ModuleList(attn)
    return level


def _mid_block(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                          ResnetBlock(channels, channels, dropout)])


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> latent (B, z_channels, H/f, W/f), f = 2 ** (len(ch_mult) - 1)."""

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, dropout: float = 0.0,
                 in_channels: int = 3):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        width = ch
        last = len(ch_mult) - 1
        for i, mult in enumerate(ch_mult):
            res, attn = [], []
            for _ in range(num_res_blocks):
                res.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
                if i == last:  # attention only at the lowest resolution
                    attn.append(AttnBlock(width))
            level = _level(res, attn)
            if i != last:
                level.downsample = Downsample(width)
            self.conv_blocks.append(level)
        self.mid = _mid_block(width, dropout)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            for i, block in enumerate(level.res):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, 'downsample'):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, h*f, w*f); mirrors :class:`Encoder`.

    Each level has ``num_res_blocks + 1`` residual blocks, as in the official decoder.
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, dropout: float = 0.0,
                 out_channels: int = 3):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _mid_block(width, dropout)
        self.conv_blocks = nn.ModuleList()
        last = len(ch_mult) - 1
        for i in reversed(range(len(ch_mult))):
            res, attn = [], []
            for _ in range(num_res_blocks + 1):
                res.append(ResnetBlock(width, ch * ch_mult[i], dropout))
                width = ch * ch_mult[i]
                if i == last:
                    attn.append(AttnBlock(width))
            level = _level(res, attn)
            if i != 0:
                level.upsample = Upsample(width)
            self.conv_blocks.append(level)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def blocks(self) -> list[nn.Module]:
        """The residual, attention and upsampling blocks (what activation checkpointing
        recomputes, :func:`rankekit.utils.memory.recompute_in_backward`)."""
        return [*self.mid] + [m for level in self.conv_blocks
                              for m in (*level.res, *level.attn, getattr(level, 'upsample', None))
                              if m is not None]

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output conv (adaptive GAN-loss weighting uses its gradient norm)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            for i, block in enumerate(level.res):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, 'upsample'):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Mean per-sample entropy minus entropy of the mean code distribution."""
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs, log_probs = logits.softmax(-1), logits.log_softmax(-1)
    mean_probs = probs.mean(0)
    batch_entropy = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    return sample_entropy - batch_entropy


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser with a straight-through gradient (L2-normalised by default).

    ``forward(z)`` returns ``(z_q, (vq_loss, commit_loss, entropy_loss, usage),
    (None, None, indices))`` like LlamaGen's module; the losses are ``None`` and usage 0 in eval.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 l2_norm: bool = True, show_usage: bool = True):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.entropy_loss_ratio = entropy_loss_ratio
        self.l2_norm, self.show_usage = l2_norm, show_usage
        self.embedding = nn.Embedding(n_e, e_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / n_e, 1.0 / n_e)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if show_usage:
            # ring of the most recent code indices (float, as in the official checkpoints)
            self.register_buffer('codebook_used', torch.zeros(CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """The (n_e, e_dim) code vectors as used: L2-normalised rows when ``l2_norm``."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=-1) if self.l2_norm else weight

    def forward(self, z: torch.Tensor):
        z = z.permute(0, 2, 3, 1).contiguous()  # (b, h, w, c)
        if z.shape[-1] != self.e_dim:
            raise ValueError(f'VectorQuantizer expects {self.e_dim} channels, got {z.shape[-1]} '
                             f'(input shape {tuple(z.permute(0, 3, 1, 2).shape)})')
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        flat = z.view(-1, self.e_dim)
        embedding = self.codebook()
        # squared distance |z|^2 + |e|^2 - 2 z.e, as the official code computes it
        dist = (flat.pow(2).sum(1, keepdim=True) + embedding.pow(2).sum(1)
                - 2 * flat @ embedding.t())
        indices = dist.argmin(1)
        z_q = embedding[indices].view(z.shape)

        vq_loss = commit_loss = ent_loss = None
        usage = 0
        if self.training:
            if self.show_usage:
                usage = self._update_usage(indices)
            vq_loss = (z_q - z.detach()).pow(2).mean()
            commit_loss = self.beta * (z_q.detach() - z).pow(2).mean()
            ent_loss = (self.entropy_loss_ratio * entropy_loss(-dist) if self.entropy_loss_ratio
                        else dist.new_zeros(()))
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return (z_q.permute(0, 3, 1, 2), (vq_loss, commit_loss, ent_loss, usage),
                (None, None, indices))

    @torch.no_grad()
    def _update_usage(self, indices: torch.Tensor) -> float:
        ring, n = self.codebook_used, indices.numel()
        if n >= ring.numel():
            ring.copy_(indices[-ring.numel():].to(ring.dtype))
        else:
            ring[:-n] = ring[n:].clone()
            ring[-n:] = indices.to(ring.dtype)
        return len(torch.unique(ring)) / self.n_e

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None = None,
                           channel_first: bool = True) -> torch.Tensor:
        """Code vectors of ``indices``, reshaped to ``shape`` when given.

        ``shape`` is (b, c, h, w) when ``channel_first``, else (b, h, w, c).
        """
        z_q = self.codebook()[indices]
        if shape is None:
            return z_q
        if channel_first:
            b, c, h, w = shape
            return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return z_q.view(*shape)


@TOKENIZERS.register_module()
class VQModel(nn.Module):
    """LlamaGen VQ tokenizer (VQ-16 compatible keys); ``arch='VQ-16'`` or a small custom config.

    Args:
        arch: an official preset (``'VQ-16'``, ``'VQ-8'``) giving the channel multipliers; any
            explicit keyword below overrides it.
        pretrained: optional path of an official-format checkpoint (``{"model": state_dict}`` or a
            plain state_dict), loaded strictly, weights only.
        image_size: nominal input size, used for :attr:`grid_size` only (the network is
            fully convolutional).
        **config: fields of :class:`VQConfig` (LlamaGen's ``ModelArgs`` plus ``ch`` and
            ``num_res_blocks``).
    """

    info_example = dict(type='VQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1],
                        decoder_ch_mult=[1, 1], z_channels=16, codebook_size=32,
                        codebook_embed_dim=4, image_size=16)

    def __init__(self, arch: str | None = None, pretrained: str | None = None,
                 image_size: int = 256, **config):
        super().__init__()
        if arch is not None and arch not in VQ_ARCHS:
            raise ValueError(f'VQModel: unknown arch {arch!r}; choose one of {sorted(VQ_ARCHS)} '
                             'or leave arch=None and give encoder_ch_mult/decoder_ch_mult')
        known = {f.name for f in fields(VQConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f'VQModel: unknown config keys {unknown}; valid keys are arch, '
                            f'pretrained, image_size and {sorted(known)}')
        cfg = VQConfig(**{**VQ_ARCHS.get(arch, {}), **config})
        cfg.encoder_ch_mult = list(cfg.encoder_ch_mult)
        cfg.decoder_ch_mult = list(cfg.decoder_ch_mult)
        self._check(cfg)
        self.config, self.arch, self.image_size = cfg, arch, image_size

        self.encoder = Encoder(cfg.ch, cfg.encoder_ch_mult, cfg.num_res_blocks, cfg.z_channels,
                               cfg.dropout_p)
        self.decoder = Decoder(cfg.ch, cfg.decoder_ch_mult, cfg.num_res_blocks, cfg.z_channels,
                               cfg.dropout_p)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_embed_dim,
                                        cfg.commit_loss_beta, cfg.entropy_loss_ratio,
                                        cfg.codebook_l2_norm, cfg.codebook_show_usage)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)
        if pretrained:
            self.load_pretrained(pretrained)

    @staticmethod
    def _check(cfg: VQConfig) -> None:
        for name in ('encoder_ch_mult', 'decoder_ch_mult'):
            mults = getattr(cfg, name)
            if not mults or any(int(m) != m or m < 1 for m in mults):
                raise ValueError(f'VQModel: {name} must be a non-empty list of positive ints, '
                                 f'got {mults}')
            bad = [cfg.ch * m for m in mults if (cfg.ch * m) % NORM_GROUPS]
            if bad:
                raise ValueError(f'VQModel: every width ch*{name}[i] must be a multiple of '
                                 f'{NORM_GROUPS} (GroupNorm groups); ch={cfg.ch} gives {bad}. '
                                 f'Use ch=32, 64 or 128.')
        if cfg.num_res_blocks < 1 or cfg.codebook_size < 1 or cfg.codebook_embed_dim < 1:
            raise ValueError('VQModel: num_res_blocks, codebook_size and codebook_embed_dim must '
                             f'be >= 1, got {cfg.num_res_blocks}, {cfg.codebook_size}, '
                             f'{cfg.codebook_embed_dim}')

    def load_pretrained(self, path: str) -> dict:
        """Load an official-format VQ checkpoint strictly (weights only); returns the key report."""
        from rankekit.utils.weights import load_model_weights
        return load_model_weights(
            self, path, strict=True, what=f'VQ tokenizer checkpoint ({self.arch or "custom"})',
            source='LlamaGen releases vq_ds16_t2i.pt (huggingface.co/peizesun/llamagen_t2i)')

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """Number of codebook entries (the policy's vocabulary)."""
        return self.config.codebook_size

    @property
    def codebook_embed_dim(self) -> int:
        return self.config.codebook_embed_dim

    @property
    def downsample_factor(self) -> int:
        """Image pixels per code along each side: 2 ** (len(encoder_ch_mult) - 1)."""
        return 2 ** (len(self.config.encoder_ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Codes per side for ``image_size`` inputs (16 for VQ-16 at 256 px)."""
        return self.image_size // self.downsample_factor

    # ---- official API -----------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(x))``: the (B, embed_dim, h, w) latent before quantisation."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        """Images in [-1, 1] -> ``(quant, emb_loss, (perplexity, min_encodings, indices))``."""
        return self.quantize(self.encode_latent(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, embed_dim, h, w) -> images (B, 3, H, W), about [-1, 1], unclamped."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor, shape: Sequence[int] | None = None,
                    channel_first: bool = True) -> torch.Tensor:
        """Flat code indices -> images; ``shape`` as in :meth:`VectorQuantizer.get_codebook_entry`.

        Unlike the official method, ``channel_first=False`` works too (the entries are permuted to
        channel-first before decoding).
        """
        quant = self.quantize.get_codebook_entry(code_b, shape, channel_first)
        if not channel_first and shape is not None:
            quant = quant.permute(0, 3, 1, 2)
        return self.decode(quant)

    def forward(self, x: torch.Tensor):
        """Reconstruct: returns ``(images, emb_loss)`` as the official model."""
        quant, emb_loss, _ = self.encode(x)
        return self.decode(quant), emb_loss

    # ---- rankekit convenience ---------------------------------------------------------------
    @torch.no_grad()
    def images_to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> codes LongTensor (B, h*w), row-major."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'images_to_codes expects (B, 3, H, W) images in [-1, 1], got '
                             f'shape {tuple(x.shape)}')
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f'image size {tuple(x.shape[-2:])} is not a multiple of the '
                             f'downsample factor {f}')
        _, _, (_, _, indices) = self.encode(x)
        return indices.view(x.shape[0], -1)

    def codes_to_images(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, L) on a square grid -> images (B, 3, H, W); differentiable in the decoder."""
        if codes.dim() != 2:
            raise ValueError(f'codes_to_images expects (B, L) codes, got shape '
                             f'{tuple(codes.shape)}')
        side = math.isqrt(codes.shape[1])
        if side * side != codes.shape[1]:
            raise ValueError(f'codes_to_images assumes a square grid; L={codes.shape[1]} is not '
                             'a perfect square')
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f'codes must lie in [0, {self.codebook_size}); got range '
                             f'[{int(codes.min())}, {int(codes.max())}]')
        shape = (codes.shape[0], self.codebook_embed_dim, side, side)
        return self.decode_code(codes.reshape(-1).long(), shape, channel_first=True)

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of ``decoder`` and ``post_quant_conv``: the parts RankE trains."""
        yield from self.post_quant_conv.parameters()
        yield from self.decoder.parameters()

    def decoder_modules(self) -> dict[str, nn.Module]:
        """The trainable decoder parts by name (``post_quant_conv``, ``decoder``)."""
        return dict(post_quant_conv=self.post_quant_conv, decoder=self.decoder)

    def freeze_encoder(self) -> 'VQModel':
        """Stop gradients to the encoder, quant_conv and codebook (RankE keeps them fixed)."""
        for module in (self.encoder, self.quant_conv, self.quantize):
            module.requires_grad_(False)
        return self

    def extra_repr(self) -> str:
        cfg = asdict(self.config)
        return f'arch={self.arch}, image_size={self.image_size}, ' + ', '.join(
            f'{k}={v}' for k, v in cfg.items())
