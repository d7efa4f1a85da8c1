"""Image discriminators for the decoder's adversarial terms."""
from __future__ import annotations

from torch import Tensor, nn

from rankekit.registry import MODELS


@MODELS.register_module()
class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / taming-transformers style): one logit per image patch.

    ``n_layers`` stride-2 convolutions (4x4 kernels, channels ndf, 2 ndf, 4 ndf, ... capped at
    8 ndf), then a stride-1 convolution and a 1-channel output convolution. The released RankE
    uses 3 layers and ndf 64 (256 px images); the toy uses fewer, narrower layers.
    Input images in [-1, 1]; output (N, 1, h, w) logits.

    ``pretrained``: a state_dict file (e.g. ``toy://vq_disc.pt``, the discriminator of the toy
    tokenizer's GAN stage), loaded strictly, so that a decoder phase continues the tokenizer's
    adversarial game instead of restarting it against a random critic.
    """

    info_example = dict(type='PatchGANDiscriminator', ndf=16, n_layers=2)

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: str = 'batch', pretrained: str | None = None):
        super().__init__()
        if norm not in ('batch', 'group', 'none'):
            raise ValueError(f"PatchGANDiscriminator norm '{norm}' is unknown; use 'batch', "
                             "'group' or 'none'")

        def norm_layer(ch):
            if norm == 'batch':
                return nn.BatchNorm2d(ch)
            if norm == 'group':
                return nn.GroupNorm(min(32, ch // 4) or 1, ch)
            return nn.Identity()

        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=norm == 'none'), norm_layer(out),
                       nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)
        if pretrained:
            from rankekit.utils.weights import load_model_weights
            load_model_weights(self, pretrained, strict=True, what='discriminator weights',
                               source='tools/prepare_toy_assets.py (toy) or your own GAN run')

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images)
