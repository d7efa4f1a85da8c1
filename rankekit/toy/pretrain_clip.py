"""Contrastive pretraining of the toy CLIP (the toy world's reward model) on ``ToyShapes``.

Duplicates: many batch items show the same scene (240 one-object scenes) under different caption
templates. They are treated as positives of each other: the InfoNCE target of a row is uniform
over every column with the same scene (same attribute rows, in either object order, or the same
caption when attributes are absent), not the diagonal alone, so that no correct pair is pushed
apart.

Train it with ``python tools/train.py configs/pretrain/clip_toy.py``
(``tools/prepare_toy_assets.py`` runs that and exports ``toy://clip.pt``);
:func:`export_clip_weights` turns a runner checkpoint into the plain state_dict that
``ClipScore(model_name='rankekit-toy-clip', pretrained=...)`` loads.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel

from rankekit.registry import MODELS
from rankekit.rewards.clip_score import build_open_clip, preprocess_like
from rankekit.rewards.toy_clip import TOY_CLIP_CFG, TOY_CLIP_NAME

_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the learned temperature


def scene_keys(attributes: torch.Tensor | None, captions: Sequence[str]) -> list:
    """One hashable key per item naming its scene: attribute rows sorted (object order does not
    matter), or the caption itself when attributes are not given."""
    if attributes is None:
        return list(captions)
    rows = attributes.detach().cpu().view(len(attributes), -1, 4).tolist()
    return [tuple(sorted(tuple(r) for r in item)) for item in rows]


def positive_mask(keys: Sequence) -> torch.Tensor:
    """(B, B) bool: item i and item j show the same scene."""
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    labels = torch.tensor([ids[k] for k in keys])
    return labels[:, None] == labels[None, :]


def multi_positive_info_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, B) rows against the uniform distribution over positives."""
    target = positives.float() / positives.sum(1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


@MODELS.register_module()
class ClipPretrainModel(BaseModel):
    """Trains an open_clip model (the toy CLIP by default) with a symmetric InfoNCE loss.

    Batches: ``dict(image=(B, 3, H, W) in [0, 1], caption=list[str], attributes=(B, 2, 4))``
    (``ToyShapes`` through ``default_collate``); ``attributes`` is optional. Images go through
    the same differentiable preprocessing as :class:`~rankekit.rewards.ClipScore`, so the
    reward sees exactly what the model was trained on. The temperature is learned (open_clip's
    ``logit_scale``, capped at 100). Logged: ``loss/contrastive``, ``acc/i2t``, ``acc/t2i``
    (share of rows whose best match is a positive) and ``logit_scale``.

    Args:
        model_name / model_cfg / pretrained: the open_clip model, as for ``ClipScore``.
        same_scene_positives: treat items showing the same scene as positives (see the module
            doc); False uses the diagonal only.
    """

    info_example = dict(type='ClipPretrainModel')

    def __init__(self, model_name: str = TOY_CLIP_NAME, model_cfg: dict | None = TOY_CLIP_CFG,
                 pretrained: str | None = None, same_scene_positives: bool = True,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.model_name, self.model_cfg = model_name, model_cfg
        self.clip, self.tokenizer = build_open_clip(model_name, model_cfg=model_cfg,
                                                    pretrained=pretrained)
        self.preprocess_cfg = dict(self.clip.visual.preprocess_cfg)
        self.same_scene_positives = same_scene_positives
        self._token_cache: dict[str, torch.Tensor] = {}  # BPE is slow Python; captions repeat

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised model input (the same as ClipScore's)."""
        return preprocess_like(images, self.preprocess_cfg)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._token_cache]
        if missing:
            if len(self._token_cache) > 100_000:
                self._token_cache.clear()
            self._token_cache.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self._token_cache[c] for c in captions]).to(self.device)

    def encode(self, image: torch.Tensor, caption: Sequence[str]):
        """L2-normalised image and text features, each (B, D)."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError('ClipPretrainModel expects batch["image"] as a float tensor '
                             f'(B, 3, H, W) in [0, 1], got {shape}')
        if isinstance(caption, str) or len(caption) != len(image):
            raise ValueError(f'ClipPretrainModel expects batch["caption"] as a list of '
                             f'{len(image)} strings (one per image), got {caption!r:.80}')
        image_feats = self.clip.encode_image(self.preprocess(image.float()), normalize=True)
        text_feats = self.clip.encode_text(self.tokenize(caption), normalize=True)
        return image_feats, text_feats

    def forward(self, image: torch.Tensor, caption: Sequence[str],
                attributes: torch.Tensor | None = None, mode: str = 'tensor', **unused):
        """``'loss'``: loss dict; ``'predict'``: per-item dicts of features; ``'tensor'``:
        ``(image_features, text_features)``."""
        if mode == 'loss':
            return self.loss(image, caption, attributes)
        if mode not in ('tensor', 'predict'):
            raise ValueError(f"ClipPretrainModel.forward: mode must be 'loss', 'predict' or "
                             f"'tensor', got {mode!r}")
        with torch.no_grad() if mode == 'predict' else torch.enable_grad():
            image_feats, text_feats = self.encode(image, caption)
        if mode == 'tensor':
            return image_feats, text_feats
        attributes = [None] * len(image) if attributes is None else attributes
        return [dict(image_embed=i, text_embed=t, caption=c, attributes=a)
                for i, t, c, a in zip(image_feats, text_feats, caption, attributes)]

    def loss(self, image, caption, attributes=None) -> dict[str, torch.Tensor]:
        image_feats, text_feats = self.encode(image, caption)
        scale = self.clip.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()
        logits = scale * image_feats @ text_feats.t()
        if self.same_scene_positives:
            positives = positive_mask(scene_keys(attributes, caption)).to(logits.device)
        else:
            positives = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        # the mask is symmetric, so the text->image loss uses it unchanged
        loss = 0.5 * (multi_positive_info_nce(logits, positives)
                      + multi_positive_info_nce(logits.t(), positives))
        with torch.no_grad():
            rows = torch.arange(len(logits), device=logits.device)
            acc_i2t = positives[rows, logits.argmax(1)].float().mean()
            acc_t2i = positives[rows, logits.argmax(0)].float().mean()
        return OrderedDict([('loss/contrastive', loss), ('acc/i2t', acc_i2t),
                            ('acc/t2i', acc_t2i), ('logit_scale', scale.detach())])

    def save_clip(self, path: str) -> None:
        """Write the open_clip model alone as a plain state_dict (what ``ClipScore`` loads)."""
        torch.save(self.clip.state_dict(), path)


def export_clip_weights(checkpoint: str, out: str) -> None:
    """Write the CLIP of a runner checkpoint of :class:`ClipPretrainModel` as a plain state_dict.

    The runner's own checkpoint is trusted (see :mod:`rankekit.utils.weights`); the output is
    what ``ClipScore(..., pretrained=out)`` loads.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from rankekit.utils.run_files import register_runner_checkpoint_loader
    register_runner_checkpoint_loader()
    state = _load_checkpoint(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    clip = OrderedDict((k[len('clip.'):], v) for k, v in state.items() if k.startswith('clip.'))
    if not clip:
        raise ValueError(f'{checkpoint} holds no ClipPretrainModel weights (no "clip." keys; '
                         f'first keys: {list(state)[:5]})')
    torch.save(clip, out)


@torch.no_grad()
def evaluate_retrieval(model, dataset, batch_size: int = 250,
                       details: bool = False) -> float | dict[str, float]:
    """Top-1 text-to-image retrieval accuracy of a CLIP over a captioned dataset.

    Every item's caption is matched against all of the dataset's images; it counts as right when
    the best image shows the caption's scene (the same attributes, in either object order).
    Duplicated scenes thus do not penalise the model for picking another copy. Without
    ``attributes`` in the items, only the caption's own image counts.

    Args:
        model: a :class:`ClipPretrainModel` or a :class:`~rankekit.rewards.ClipScore` (anything
            with ``clip``, ``tokenizer`` and ``preprocess``). Captions are used without prefix.
        dataset: items ``dict(image, caption[, attributes, num_objects])`` (e.g. ``ToyShapes``
            val).
        details: return a dict: ``t2i`` (the same number), ``i2t`` (best caption per image is
            of the image's scene), ``t2i_one_object`` / ``t2i_two_objects``, ``num``.
    """
    clip, device = model.clip, next(model.clip.parameters()).device
    was_training = clip.training
    clip.eval()
    image_feats, text_feats, keys, num_objects = [], [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([it['image'] for it in items]).to(device).float()
            captions = [it['caption'] for it in items]
            tokens = model.tokenizer(captions).to(device)
            image_feats.append(clip.encode_image(model.preprocess(images), normalize=True))
            text_feats.append(clip.encode_text(tokens, normalize=True))
            attributes = (torch.stack([it['attributes'] for it in items])
                          if all('attributes' in it for it in items) else None)
            keys += (scene_keys(attributes, captions) if attributes is not None
                     else list(range(start, start + len(items))))
            num_objects += [int(it.get('num_objects', 0)) for it in items]
    finally:
        clip.train(was_training)
    sims = torch.cat(text_feats) @ torch.cat(image_feats).t()  # (texts, images)
    positives = positive_mask(keys).to(sims.device)
    rows = torch.arange(len(sims), device=sims.device)
    t2i = positives[rows, sims.argmax(1)].float()
    if not details:
        return t2i.mean().item()
    i2t = positives[rows, sims.argmax(0)].float()
    num_objects = torch.tensor(num_objects, device=sims.device)
    one, two = num_objects == 1, num_objects == 2
    return dict(t2i=t2i.mean().item(), i2t=i2t.mean().item(),
                t2i_one_object=t2i[one].mean().item() if one.any() else float('nan'),
                t2i_two_objects=t2i[two].mean().item() if two.any() else float('nan'),
                num=len(t2i))
