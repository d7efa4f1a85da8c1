"""The toy world's feature network: attribute classifier, FID features, perceptual activations.

``ToyFeatureNet`` is a small CNN trained (see :mod:`rankekit.toy.pretrain_feature_net`) to read
the attributes of a toy-shapes image. It plays three roles the real backbones give to three
networks:

- FID features (Inception's role): :meth:`ToyFeatureNet.features`, the penultimate layer;
- compositional accuracy (GenEval's role): :meth:`ToyFeatureNet.match_attributes`;
- perceptual distance (LPIPS's role): :meth:`ToyFeatureNet.activations`.

Order-free heads: a scene's objects are not ordered, but their positions are distinct, so the net
predicts one *slot* per position (left, right, top, bottom, center): is the slot occupied, and if
so by which colour, shape and size. Any caption's attributes (N, 2, 4) then map to slots through
their position column, whatever order the caption lists the objects in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import FEATURE_EXTRACTORS

#: attribute columns of an ``attributes`` tensor (N, 2, 4), as the toy dataset writes them
COLOUR, SHAPE, SIZE, POSITION = range(4)
#: head names in column order; 'occupancy' plays the position column
HEADS = ('colour', 'shape', 'size', 'occupancy')


def toy_vocabulary_sizes() -> dict:
    """Number of colours, shapes, sizes and positions of the toy dataset."""
    from rankekit.datasets import toy_shapes  # lazy: the dataset module is only needed here
    return dict(num_colours=len(toy_shapes.COLOURS), num_shapes=len(toy_shapes.SHAPES),
                num_sizes=len(toy_shapes.SIZES), num_positions=len(toy_shapes.POSITIONS))


def slot_head_sizes(sizes: dict) -> dict:
    """Classes of each slot head, in :data:`HEADS` order, from counts as returned by
    :func:`toy_vocabulary_sizes` (occupancy is empty / occupied)."""
    return dict(colour=sizes['num_colours'], shape=sizes['num_shapes'], size=sizes['num_sizes'],
                occupancy=2)


def check_attributes(attributes: torch.Tensor, n: int, what: str = 'attributes') -> torch.Tensor:
    """Validate an (N, 2, 4) attribute tensor; return it as long. Every row needs an object."""
    if (not isinstance(attributes, torch.Tensor) or attributes.dim() != 3
            or attributes.shape[2] != 4):
        shape = (tuple(attributes.shape) if isinstance(attributes, torch.Tensor)
                 else type(attributes))
        raise ValueError(f'{what} must be a LongTensor (N, objects, 4) with columns colour, shape, '
                         f'size, position (-1 = not given), got {shape}')
    if attributes.shape[0] != n:
        raise ValueError(f'{what} has {attributes.shape[0]} rows but there are {n} images')
    attributes = attributes.long()
    present = (attributes >= 0).any(-1)  # (N, objects)
    empty = (~present.any(-1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f'{what}[{empty[0].item()}] names no attribute at all (every entry is '
                         f'-1): the prompt did not parse as a toy caption; check parse_caption')
    return attributes


def _check_ranges(logits: dict, attributes: torch.Tensor) -> None:
    """Attribute ids must exist in the heads (a net built for another vocabulary fails here)."""
    limits = [logits[h].shape[-1] for h in HEADS[:3]] + [logits['occupancy'].shape[1]]
    for col, (name, limit) in enumerate(zip(('colour', 'shape', 'size', 'position'), limits)):
        if (attributes[..., col] >= limit).any():
            raise ValueError(f'{name} id {attributes[..., col].max().item()} is out of range: the '
                             f'network knows {limit} {name}s (built for another toy vocabulary?)')


def slot_probability_table(logits: dict, objects: torch.Tensor) -> torch.Tensor:
    """Per-slot probabilities of one object's attributes.

    Args:
        logits: ``predict`` output, each (N, P, classes).
        objects: (N, 4) one object per image (colour, shape, size, position; -1 = not given).
    Returns:
        (N, P, 4): P(colour), P(shape), P(size), P(occupied) at every slot; 1 where the prompt
        does not name that attribute (occupancy always counts: the object must exist).
    """
    columns = []
    for col, head in enumerate(HEADS[:3]):
        probs = logits[head].softmax(-1)  # (N, P, classes)
        wanted = objects[:, col].clamp(min=0)[:, None, None].expand(-1, probs.shape[1], 1)
        p = probs.gather(2, wanted).squeeze(2)
        columns.append(torch.where(objects[:, col:col + 1] >= 0, p, torch.ones_like(p)))
    columns.append(logits['occupancy'].softmax(-1)[..., 1])
    return torch.stack(columns, -1)


def slot_match_table(logits: dict, objects: torch.Tensor) -> torch.Tensor:
    """Like :func:`slot_probability_table` with argmax decisions: (N, P, 4) bool."""
    columns = []
    for col, head in enumerate(HEADS[:3]):
        hit = logits[head].argmax(-1) == objects[:, col:col + 1]
        columns.append(hit | (objects[:, col:col + 1] < 0))
    columns.append(logits['occupancy'].argmax(-1) == 1)
    return torch.stack(columns, -1)


def _pick_slot(table: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Slot of each object: its prompted position, else the slot that fits it best."""
    best = table.float().prod(-1).argmax(1)
    return torch.where(objects[:, POSITION] >= 0, objects[:, POSITION], best)


def attribute_probs_from_logits(logits: dict, attributes: torch.Tensor,
                                mode: str = 'product') -> torch.Tensor:
    """Score (N,) of the prompted attributes under the slot logits (see ``attribute_probs``)."""
    if mode not in ('product', 'mean'):
        raise ValueError(f"mode must be 'product' or 'mean', got {mode!r}")
    n = len(logits['occupancy'])
    attributes = check_attributes(attributes, n)
    _check_ranges(logits, attributes)
    rows = torch.arange(n, device=attributes.device)
    factors, masks = [], []
    for o in range(attributes.shape[1]):
        objects = attributes[:, o]
        table = slot_probability_table(logits, objects)
        chosen = table[rows, _pick_slot(table, objects)]  # (N, 4)
        present = (objects >= 0).any(-1, keepdim=True)
        mask = torch.cat([objects[:, :3] >= 0, torch.ones_like(objects[:, :1], dtype=torch.bool)],
                         1) & present
        factors.append(chosen)
        masks.append(mask)
    factors, masks = torch.cat(factors, 1), torch.cat(masks, 1)
    if mode == 'product':
        return torch.where(masks, factors, torch.ones_like(factors)).prod(1)
    return (factors * masks).sum(1) / masks.sum(1)


def match_from_logits(logits: dict, attributes: torch.Tensor,
                      exact_count: bool = False) -> torch.Tensor:
    """BoolTensor (N,): every prompted object found with all its prompted attributes."""
    n = len(logits['occupancy'])
    attributes = check_attributes(attributes, n)
    _check_ranges(logits, attributes)
    ok = torch.ones(n, dtype=torch.bool, device=attributes.device)
    rows = torch.arange(n, device=attributes.device)
    for o in range(attributes.shape[1]):
        objects = attributes[:, o]
        fits = slot_match_table(logits, objects).all(-1)  # (N, P)
        pos = objects[:, POSITION]
        found = torch.where(pos >= 0, fits[rows, pos.clamp(min=0)], fits.any(1))
        present = (objects >= 0).any(-1)
        ok &= found | ~present
    if exact_count:
        predicted = (logits['occupancy'].argmax(-1) == 1).sum(1)
        ok &= predicted == (attributes >= 0).any(-1).sum(1)
    return ok


def slot_targets(attributes: torch.Tensor, num_positions: int) -> dict:
    """Training targets per slot from (N, 2, 4) attributes: occupancy (N, P) in {0, 1} and
    colour/shape/size (N, P) class ids, -100 (ignored by cross-entropy) at empty slots."""
    n = len(attributes)
    targets = dict(occupancy=torch.zeros(n, num_positions, dtype=torch.long))
    for head in HEADS[:3]:
        targets[head] = torch.full((n, num_positions), -100, dtype=torch.long)
    for o in range(attributes.shape[1]):
        objects = attributes[:, o].long().cpu()
        rows = (objects >= 0).any(-1).nonzero().flatten()
        pos = objects[rows, POSITION]
        if (pos < 0).any() or (objects[rows, :3] < 0).any():
            raise ValueError('training attributes must name colour, shape, size and position of '
                             f'every object, got {objects[rows][0].tolist()}')
        if (targets['occupancy'][rows, pos] == 1).any():
            raise ValueError('two objects of one image share a position: the slot heads of '
                             'ToyFeatureNet need distinct positions per scene')
        targets['occupancy'][rows, pos] = 1
        for col, head in enumerate(HEADS[:3]):
            targets[head][rows, pos] = objects[rows, col]
    return {k: v.to(attributes.device) for k, v in targets.items()}


def _num_groups(channels: int) -> int:
    """GroupNorm groups: up to 8, at least 4 channels each, dividing ``channels``."""
    return next((g for g in (8, 4, 2) if channels % g == 0 and channels // g >= 4), 1)


@FEATURE_EXTRACTORS.register_module()
class ToyFeatureNet(nn.Module):
    """Small CNN reading toy-shape attributes: FID features, compositional accuracy, activations.

    Four conv blocks (stride 1, 2, 2, 2; GroupNorm; ReLU) pooled to a 4x4 grid (so 32x32 and
    64x64 inputs both work and positions stay readable), one linear layer to ``feat_dim``
    features (the FID features), and linear slot heads: for each position, occupancy (empty /
    occupied), colour, shape and size logits.

    The reward classifier and the FID / accuracy network of a study must be different networks
    (else reward hacking is invisible in FID): build them with different ``width`` (and train
    them with different seeds); e.g. FID net ``width=32, feat_dim=64`` (seed 0) and reward net
    ``width=24, feat_dim=96`` (seed 1).

    Args:
        width: channels of the first block (later blocks 2x, 4x, 4x).
        feat_dim: size of the penultimate features (``features``).
        num_colours, num_shapes, num_sizes, num_positions: class counts; ``None`` reads them
            from :mod:`rankekit.datasets.toy_shapes`.
        pretrained: a weights file (plain state_dict) written by
            :func:`rankekit.toy.pretrain_feature_net.save_feature_net`, a packaged toy asset
            ``toy://<name>``, or ``None`` (random weights).
    """

    info_example = dict(type='ToyFeatureNet', width=8, feat_dim=16, pretrained=None)

    def __init__(self, width: int = 32, feat_dim: int = 64, num_colours: int | None = None,
                 num_shapes: int | None = None, num_sizes: int | None = None,
                 num_positions: int | None = None, pretrained: str | None = None):
        super().__init__()
        given = dict(num_colours=num_colours, num_shapes=num_shapes, num_sizes=num_sizes,
                     num_positions=num_positions)
        if any(v is None for v in given.values()):
            given = {k: v if v is not None else toy_vocabulary_sizes()[k] for k, v in given.items()}
        self.num_classes = slot_head_sizes(given)
        self.num_positions = given['num_positions']
        self.width, self.feat_dim = width, feat_dim
        channels = [width, 2 * width, 4 * width, 4 * width]
        blocks, c_in = [], 3
        for i, c_out in enumerate(channels):
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1),
                nn.GroupNorm(_num_groups(c_out), c_out), nn.ReLU(inplace=True)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(4)  # 4x4 grid keeps where things are
        self.embed = nn.Linear(c_in * 16, feat_dim)
        self.heads = nn.ModuleDict({
            head: nn.Linear(feat_dim, self.num_positions * k)
            for head, k in self.num_classes.items()})
        if pretrained is not None:
            from rankekit.utils.weights import load_model_weights
            load_model_weights(self, pretrained, strict=True, what='ToyFeatureNet weights',
                               source='python tools/prepare_toy_assets.py (the shipped toy '
                                      'assets; configs/pretrain/feature_net_toy.py)')

    @property
    def feature_dim(self) -> int:
        return self.feat_dim

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f'ToyFeatureNet expects images (N, 3, H, W) in [0, 1], got {shape}')
        if min(images.shape[-2:]) < 16:
            raise ValueError(f'ToyFeatureNet needs images of at least 16x16, got '
                             f'{tuple(images.shape[-2:])}')
        return images * 2 - 1

    def activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four conv blocks, (N, C_i, H_i, W_i) each, for perceptual distances."""
        x, outs = self._check(images), []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def _embed(self, last: torch.Tensor) -> torch.Tensor:
        return F.relu(self.embed(self.pool(last).flatten(1)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feat_dim) of images in [0, 1] (the toy FID features)."""
        return self._embed(self.activations(images)[-1])

    def predict(self, images: torch.Tensor) -> dict:
        """Slot logits: dict(colour, shape, size, occupancy) of shape (N, positions, classes)."""
        return self.heads_from_features(self.features(images))

    def heads_from_features(self, feats: torch.Tensor) -> dict:
        n = len(feats)
        return {head: layer(feats).view(n, self.num_positions, -1)
                for head, layer in self.heads.items()}

    def forward(self, images: torch.Tensor) -> dict:
        return self.predict(images)

    def attribute_probs(self, images: torch.Tensor, attributes: torch.Tensor,
                        mode: str = 'product') -> torch.Tensor:
        """Probability (N,) that the image shows the prompted attributes.

        For each prompted object: the slot at its position (or, if the prompt gives none, the
        best-fitting slot) contributes P(occupied) and P(colour), P(shape), P(size) for those
        the prompt names. ``mode='product'`` multiplies all of them, ``'mean'`` averages them.
        """
        return attribute_probs_from_logits(self.predict(images), attributes, mode)

    def match_attributes(self, images: torch.Tensor, attributes: torch.Tensor,
                         exact_count: bool = False) -> torch.Tensor:
        """BoolTensor (N,): all prompted attributes right (compositional accuracy).

        Every prompted object must be predicted at its position (any slot when the prompt gives
        no position) with every prompted attribute. ``exact_count`` also requires no extra
        predicted objects.
        """
        return match_from_logits(self.predict(images), attributes, exact_count)

    def predicted_slots(self, images: torch.Tensor) -> torch.Tensor:
        """LongTensor (N, positions, 3): argmax colour, shape, size per slot; -1 when empty."""
        logits = self.predict(images)
        slots = torch.stack([logits[h].argmax(-1) for h in HEADS[:3]], -1)
        empty = logits['occupancy'].argmax(-1) == 0
        return slots.masked_fill(empty[..., None], -1)

    def extra_repr(self) -> str:
        return (f'width={self.width}, feat_dim={self.feat_dim}, positions={self.num_positions}, '
                f'classes={self.num_classes}')
