"""Pretraining the toy feature network (and the attribute-reward classifier) on ToyShapes.

``FeatureNetPretrainModel`` is an mmengine model: cross-entropy on the per-position slot heads of a
:class:`~rankekit.toy.feature_net.ToyFeatureNet`, with augmentations that imitate VQ
reconstruction artefacts (sub-pixel shifts, blur, down/up-sampling, colour and noise jitter) so
that the net reads decoded images as well as real ones; ``configs/pretrain/feature_net_toy.py``
trains it. ``evaluate_feature_net`` measures per-attribute and all-attribute accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from rankekit.registry import FEATURE_EXTRACTORS, MODELS
from rankekit.toy.feature_net import HEADS, match_from_logits, slot_targets

DEFAULT_AUGMENT = dict(prob=0.8, shift=1.0, blur_sigma=(0.3, 0.9), blur_prob=0.3,
                       resample_prob=0.3, gain=0.08, offset=0.03, noise_std=0.03)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode='replicate')  # separable: rows then columns
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment_images(images: torch.Tensor, prob: float = 0.8, shift: float = 1.0,
                   blur_sigma: tuple = (0.3, 0.9), blur_prob: float = 0.3,
                   resample_prob: float = 0.3, gain: float = 0.08, offset: float = 0.03,
                   noise_std: float = 0.03,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Random VQ-like artefacts on a batch in [0, 1]; each image is augmented with ``prob``.

    - shift: uniform sub-pixel translation up to ``shift`` pixels (bilinear, edges replicated);
    - blur: Gaussian blur with sigma in ``blur_sigma`` on a ``blur_prob`` share of the batch;
    - resample: down- then up-sampling by 2 (blocky/smooth detail loss) on ``resample_prob``;
    - colour: per-image per-channel gain 1 +- ``gain`` and offset +- ``offset`` (small enough
      that no palette colour turns into another);
    - noise: Gaussian pixel noise with std uniform in [0, ``noise_std``].
    """
    n, _, h, w = images.shape
    dev, g = images.device, generator

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=dev)

    x = images
    if shift > 0:
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2] = (rand(n) * 2 - 1) * shift * 2 / w
        theta[:, 1, 2] = (rand(n) * 2 - 1) * shift * 2 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    if blur_prob > 0:
        sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * rand(1).item()
        pick = (rand(n) < blur_prob)[:, None, None, None]
        x = torch.where(pick, _gaussian_blur(x, sigma), x)
    if resample_prob > 0 and min(h, w) >= 16:
        small = F.interpolate(x, scale_factor=0.5, mode='bilinear', align_corners=False,
                              antialias=True)
        pick = (rand(n) < resample_prob)[:, None, None, None]
        x = torch.where(pick, F.interpolate(small, size=(h, w), mode='bilinear',
                                            align_corners=False), x)
    x = x * (1 + (rand(n, 3, 1, 1) * 2 - 1) * gain) + (rand(n, 3, 1, 1) * 2 - 1) * offset
    x = x + torch.randn(x.shape, generator=g, device=dev) * rand(n, 1, 1, 1) * noise_std
    keep = (rand(n) >= prob)[:, None, None, None]
    return torch.where(keep, images, x.clamp(0, 1))


def slot_loss(logits: dict, targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the four heads, mean per-attribute accuracy over objects)."""
    loss = logits['occupancy'].new_zeros(())
    for head in HEADS:
        loss = loss + F.cross_entropy(logits[head].flatten(0, 1), targets[head].flatten(),
                                      ignore_index=-100)
    with torch.no_grad():
        occupied = targets['occupancy'] == 1
        hits = [(logits[h].argmax(-1) == targets[h])[occupied] for h in HEADS[:3]]
        hits.append((logits['occupancy'].argmax(-1) == 1)[occupied])  # position
        acc = torch.stack([hit.float().mean() for hit in hits]).mean()
    return loss, acc


@MODELS.register_module()
class FeatureNetPretrainModel(BaseModel):
    """Trains a ToyFeatureNet on ToyShapes batches with cross-entropy on its slot heads.

    ``forward(image, attributes, mode)`` takes mmengine's collated ToyShapes batch
    (``image`` (B, 3, H, W) in [0, 1], ``attributes`` (B, 2, 4); other keys are ignored).
    Mode 'loss' augments the images (``augment``; ``None`` turns it off) and returns
    ``{'loss/ce', 'acc/attr'}`` (acc/attr: mean over colour, shape, size, position of the
    share of objects read right, on the augmented batch). Mode 'predict' returns one dict per
    image: ``slots`` (positions, 3) argmax colour/shape/size (-1 = empty) and ``match`` (all
    attributes right, no extra object). Mode 'tensor' returns the slot logits.

    Args:
        net: the ToyFeatureNet config (use a different width/seed for the reward classifier
            than for the FID net).
        augment: kwargs of :func:`augment_images`.
    """

    info_example = dict(type='FeatureNetPretrainModel',
                        net=dict(type='ToyFeatureNet', width=8, feat_dim=16))

    def __init__(self, net: dict | None = None, augment: dict | None = DEFAULT_AUGMENT,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        net = dict(type='ToyFeatureNet') if net is None else net
        self.net = FEATURE_EXTRACTORS.build(net) if isinstance(net, dict) else net
        self.augment = None if augment is None else dict(augment)
        if self.augment is not None:
            unknown = set(self.augment) - set(DEFAULT_AUGMENT)
            if unknown:
                raise ValueError(f'FeatureNetPretrainModel.augment has unknown keys '
                                 f'{sorted(unknown)}; known: {sorted(DEFAULT_AUGMENT)}')

    def forward(self, image: torch.Tensor, attributes: torch.Tensor | None = None,
                mode: str = 'tensor', **unused):
        if mode == 'tensor':
            return self.net.predict(image)
        if attributes is None:
            raise ValueError(f"FeatureNetPretrainModel mode '{mode}' needs the batch's "
                             "'attributes' (ToyShapes items carry them)")
        if mode == 'loss':
            if self.augment is not None:
                image = augment_images(image, **self.augment)
            loss, acc = slot_loss(self.net.predict(image),
                                  slot_targets(attributes, self.net.num_positions))
            return {'loss/ce': loss, 'acc/attr': acc}
        if mode == 'predict':
            with torch.no_grad():
                logits = self.net.predict(image)
                match = match_from_logits(logits, attributes, exact_count=True)
                slots = torch.stack([logits[h].argmax(-1) for h in HEADS[:3]], -1)
                slots = slots.masked_fill(logits['occupancy'].argmax(-1)[..., None] == 0, -1)
            return [dict(slots=s, match=bool(m)) for s, m in zip(slots, match)]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")


def _batches(dataset, batch_size: int, indices=None):
    indices = range(len(dataset)) if indices is None else indices
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        yield (torch.stack([it['image'] for it in items]),
               torch.stack([torch.as_tensor(it['attributes']) for it in items]))


@torch.no_grad()
def evaluate_feature_net(net: nn.Module, dataset, batch_size: int = 250,
                         image_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         max_samples: int | None = None) -> dict:
    """Accuracy of a ToyFeatureNet on a ToyShapes split.

    Per object of the ground truth: ``position`` = its slot is predicted occupied;
    ``colour``/``shape``/``size`` = that slot's argmax is right. ``attr`` = mean of those four;
    ``count`` = number of predicted objects right; ``all`` = every attribute of every object
    right and no extra object (the compositional accuracy on real images).

    Args:
        image_fn: maps a batch of images before the net sees them (e.g. a VQ round trip, to
            measure accuracy on reconstructions).
    """
    was_training = net.training
    net.eval()
    hits = {k: 0 for k in ('colour', 'shape', 'size', 'position')}
    objects = count = all_right = seen = 0
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    device = next(net.parameters()).device
    for images, attributes in _batches(dataset, batch_size, range(n)):
        images, attributes = images.to(device), attributes.to(device)
        if image_fn is not None:
            images = image_fn(images)
        logits = net.predict(images)
        targets = slot_targets(attributes, net.num_positions)
        occupied = targets['occupancy'] == 1
        for col, head in enumerate(HEADS[:3]):
            hits[('colour', 'shape', 'size')[col]] += (
                (logits[head].argmax(-1) == targets[head]) & occupied).sum().item()
        predicted = logits['occupancy'].argmax(-1) == 1
        hits['position'] += (predicted & occupied).sum().item()
        objects += occupied.sum().item()
        count += (predicted.sum(1) == occupied.sum(1)).sum().item()
        all_right += match_from_logits(logits, attributes, exact_count=True).sum().item()
        seen += len(images)
    net.train(was_training)
    result = {k: v / objects for k, v in hits.items()}
    result['attr'] = sum(result.values()) / 4
    result.update(count=count / seen, all=all_right / seen, num_images=seen)
    return result


def save_feature_net(net: nn.Module, path: str | Path) -> Path:
    """Write the plain state_dict that ``ToyFeatureNet(pretrained=path)`` loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, path)
    return path
