"""A VQ tokenizer whose codes are local: each code sees only its own image patch.

LlamaGen's encoder (convolutions, GroupNorm over the whole image, self-attention at the lowest
resolution) lets every code depend on the whole image: on the toy world, drawing a second object
changes 81% of a scene's 64 codes. This tokenizer was built to test whether that is why the first
toy policy could not compose; it was not (model_zoo.md, "Toy backbone": the jointly trained text
encoder was), and the shipped toy tokenizer stays a :class:`VQModel`. It is kept for that
experiment and for tokenizer ablations. :class:`PatchVQModel` keeps everything of :class:`VQModel`
(decoder, quantiser, key names, API) and replaces the encoder with a per-patch network: a
``f x f`` stride-``f`` convolution followed by 1x1 layers, so a code is a function of its
``f x f`` pixels alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import TOKENIZERS
from rankekit.tokenizers.vq_model import VQModel


class PatchEncoder(nn.Module):
    """Image (B, 3, H, W) -> latent (B, z_channels, H/f, W/f), each position from one patch.

    Args:
        patch: patch side ``f`` (the downsample factor).
        width: hidden channels of the per-patch network.
        depth: residual 1x1 blocks after the patch embedding.
        z_channels: output channels.
    """

    def __init__(self, patch: int, width: int, depth: int, z_channels: int,
                 in_channels: int = 3):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 1), nn.SiLU(),
                          nn.Conv2d(width, width, 1)) for _ in range(depth))
        self.conv_out = nn.Conv2d(width, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.conv_out(F.silu(h))


@TOKENIZERS.register_module()
class PatchVQModel(VQModel):
    """:class:`VQModel` with a per-patch encoder (:class:`PatchEncoder`): local codes.

    Same arguments as :class:`VQModel` (``encoder_ch_mult`` still sets the downsample factor,
    ``2 ** (len(encoder_ch_mult) - 1)``), plus:

    Args:
        encoder_width: hidden channels of the per-patch encoder.
        encoder_depth: its residual 1x1 blocks.
    """

    info_example = dict(type='PatchVQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1],
                        decoder_ch_mult=[1, 1], z_channels=16, codebook_size=32,
                        codebook_embed_dim=4, image_size=16, encoder_width=32, encoder_depth=1)

    def __init__(self, arch: str | None = None, pretrained: str | None = None,
                 image_size: int = 256, encoder_width: int = 128, encoder_depth: int = 2,
                 **config):
        if encoder_width < 1 or encoder_depth < 0:
            raise ValueError(f'PatchVQModel: encoder_width must be >= 1 and encoder_depth >= 0, '
                             f'got {encoder_width}, {encoder_depth}')
        super().__init__(arch=arch, pretrained=None, image_size=image_size, **config)
        self.encoder = PatchEncoder(self.downsample_factor, encoder_width, encoder_depth,
                                    self.config.z_channels)
        if pretrained:
            self.load_pretrained(pretrained)
