"""CLIP score reward: ``scale * cos(image, prefix + prompt)`` with any open_clip architecture.

open_clip is imported inside functions only, so that importing this module (``rankekit list``)
stays cheap. Nothing here downloads: weights come from a local file or are random.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from rankekit.registry import REWARDS
from rankekit.rewards.base import BaseReward
from rankekit.rewards.toy_clip import TOY_CLIP_CFG, TOY_CLIP_CONFIGS, TOY_CLIP_NAME
from rankekit.utils.weights import load_model_weights, require_weights

# architectures this process registered with open_clip (name -> config)
_REGISTERED: dict[str, dict] = {}
_HUB_PREFIXES = ('hf-hub:', 'local-dir:', 'http://', 'https://')
_PREPROCESS_KEYS = {'size', 'mean', 'std', 'interpolation', 'resize_mode', 'fill_color'}


def _plain(cfg) -> dict:
    # ConfigDict / tuples -> the plain JSON form open_clip stores, so configs compare equal
    return json.loads(json.dumps(cfg))


def register_open_clip_config(name: str, model_cfg: dict) -> None:
    """Make ``open_clip.create_model(name)`` build ``model_cfg`` (an open_clip model config dict).

    Uses open_clip's public ``add_model_config`` on a temporary JSON file. Registering the same
    config twice is a no-op; a new config under a name this process registered replaces it; a
    name of one of open_clip's built-in architectures cannot be redefined.
    """
    import open_clip
    if not isinstance(model_cfg, dict):
        raise TypeError(f"model_cfg for '{name}' must be a dict (an open_clip model config), got "
                        f'{type(model_cfg).__name__}')
    missing = [k for k in ('embed_dim', 'vision_cfg', 'text_cfg') if k not in model_cfg]
    if missing:
        raise ValueError(f"model_cfg for '{name}' lacks {missing}; an open_clip model config has "
                         f'embed_dim, vision_cfg and text_cfg (see rankekit/rewards/toy_clip.py)')
    cfg = _plain(model_cfg)
    if _REGISTERED.get(name) == cfg:
        return
    if name not in _REGISTERED and name in open_clip.list_models():
        if _plain(open_clip.get_model_config(name)) == cfg:
            return
        raise ValueError(f"model_cfg given for '{name}', which is one of open_clip's built-in "
                         f'architectures with a different config; give the custom architecture '
                         f'a new model_name')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f'{name}.json'
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)  # reads the file now; later rescans skip it once deleted
    _REGISTERED[name] = cfg


def check_finetuned_path(reward: str, pretrained: str | None, what: str, source: str,
                         where: str) -> None:
    """Before a large CLIP is built: warn that ``pretrained=None`` means random weights, or
    fail with the missing-file message when ``pretrained`` is not there."""
    if pretrained is None:
        warnings.warn(f'{reward}(pretrained=None) has RANDOM weights: its scores mean nothing '
                      f'(tests only); set pretrained to {where}')
    else:
        require_weights(pretrained, what=what, source=source, where=where)


def _is_local_file(path: str) -> bool:
    from rankekit.utils.toy_assets import is_toy_asset, toy_asset_path
    if is_toy_asset(path):  # toy://name: a checkpoint shipped with the package
        return toy_asset_path(path, must_exist=False).is_file()
    return Path(path).expanduser().is_file()


@contextmanager
def _quiet_logging():
    # open_clip logs "initialized randomly" even when we load weights right after building
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _weights_source(model_name: str, weights_tag: str | None) -> str:
    """Where the weights of ``model_name`` come from, for the missing-file message."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
    if model_name == TOY_CLIP_NAME:
        return ('the toy CLIP pretraining: python tools/train.py configs/pretrain/clip_toy.py '
                '(or python tools/prepare_toy_assets.py --only clip, which writes toy://clip.pt)')
    if model_name in TOY_CLIP_CONFIGS:
        return ('the held-out toy CLIP pretraining: python tools/prepare_toy_assets.py --only '
                'clip_eval, which writes toy://clip_eval.pt')
    tags = list_pretrained_tags_by_model(model_name)
    if not tags:
        return ('a state_dict of this open_clip architecture, saved with '
                'torch.save(model.state_dict(), path)')
    tag = weights_tag if weights_tag in tags else ('openai' if 'openai' in tags else tags[0])
    hub = get_pretrained_cfg(model_name, tag).get('hf_hub', '').rstrip('/')
    where = (f'https://huggingface.co/{hub} (file open_clip_pytorch_model.bin)' if hub
             else 'the open_clip release')
    return (f"open_clip's pretrained weights for {model_name} (tags {tags}); e.g. tag '{tag}' "
            f'from {where}; download it on a machine with network and pass weights_tag='
            f"'{tag}' with it so that the preprocessing matches")


def build_open_clip(model_name: str, model_cfg: dict | None = None, pretrained: str | None = None,
                    weights_tag: str | None = None, context_length: int | None = None,
                    preprocess_cfg: dict | None = None, what: str = 'CLIP weights'):
    """Build an open_clip model and its tokenizer, with weights from a LOCAL file or random.

    Args:
        model_name: an open_clip architecture name (``'ViT-L-14'``), or a new name for
            ``model_cfg``.
        model_cfg: an open_clip model config dict registering a custom architecture.
        pretrained: a local weights file (a state_dict, loaded strictly), or None for random
            weights. Hub tags ('openai') and hub names are refused: nothing is downloaded.
        weights_tag: the open_clip pretrained tag the local file was exported from (e.g.
            'openai'); sets QuickGELU and the preprocessing (mean/std/resize) to match it.
        context_length: overrides the text tower's context length (the weights must fit).
        preprocess_cfg: overrides of ``mean``/``std``/``interpolation``/``resize_mode``/``size``.

    Returns:
        ``(model, tokenizer)``; the preprocessing config is ``model.visual.preprocess_cfg``.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    from rankekit.utils.weights import load_weights_file

    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f'model_name must be an open_clip architecture name, got {model_name!r}')
    if model_name.startswith(_HUB_PREFIXES):
        raise ValueError(f"model_name='{model_name}' would load from a hub or folder; rankekit "
                         f'never downloads. Give the architecture name (or model_cfg) and the '
                         f'local weights file as pretrained=')
    if model_cfg is None and model_name in TOY_CLIP_CONFIGS:
        model_cfg = TOY_CLIP_CONFIGS[model_name]  # the toy architectures ship with rankekit
    if model_cfg is not None:
        register_open_clip_config(model_name, model_cfg)
    arch = open_clip.get_model_config(model_name)
    if arch is None:
        raise ValueError(f"unknown open_clip architecture '{model_name}'; use one of "
                         f'open_clip.list_models() (e.g. ViT-B-32, ViT-L-14) or pass model_cfg=dict'
                         f'(embed_dim=..., vision_cfg=..., text_cfg=...)')
    text_cfg = arch.get('text_cfg', {})
    needs_hf = text_cfg.get('hf_model_name') or text_cfg.get('hf_tokenizer_name') \
        or 'siglip' in model_name.lower()
    if needs_hf and os.environ.get('HF_HUB_OFFLINE') != '1':
        raise ValueError(f"open_clip model '{model_name}' uses a Hugging Face text "
                         f'model/tokenizer, which transformers would download; set '
                         f'HF_HUB_OFFLINE=1 to use files already in the Hugging Face cache')

    force_quick_gelu, force_preprocess = False, {}
    if weights_tag is not None:
        tags = list_pretrained_tags_by_model(model_name)
        if weights_tag not in tags:
            raise ValueError(f"weights_tag='{weights_tag}' is not an open_clip pretrained tag of "
                             f"'{model_name}' (tags: {tags})")
        tag_cfg = get_pretrained_cfg(model_name, weights_tag)
        force_quick_gelu = bool(tag_cfg.get('quick_gelu', False))
        force_preprocess = {k: tag_cfg[k] for k in ('mean', 'std', 'interpolation', 'resize_mode')
                            if k in tag_cfg}
    unknown = set(preprocess_cfg or {}) - _PREPROCESS_KEYS
    if unknown:
        raise ValueError(f'preprocess_cfg has unknown keys {sorted(unknown)}; allowed: '
                         f'{sorted(_PREPROCESS_KEYS)}')
    force_preprocess.update(preprocess_cfg or {})

    what = f"{what} for open_clip model '{model_name}'"
    source = None
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        if not _is_local_file(pretrained):
            is_tag = pretrained in list_pretrained_tags_by_model(model_name)
            if is_tag or pretrained.startswith(_HUB_PREFIXES):
                hint = f", weights_tag='{pretrained}'" if is_tag else ''
                raise ValueError(
                    f"pretrained='{pretrained}' names weights on a hub; rankekit never downloads. "
                    f'Get the file once on a machine with network '
                    f'({_weights_source(model_name, pretrained if is_tag else weights_tag)}), then '
                    f"pass its local path: pretrained='/path/to/file'{hint}")
        source = _weights_source(model_name, weights_tag)
        if not _is_local_file(pretrained):
            load_weights_file(pretrained, what=what, source=source)  # raises the missing-file error
    with _quiet_logging():
        model = open_clip.create_model(
            model_name, pretrained=None, load_weights=False, pretrained_image=False,
            pretrained_text=False, force_quick_gelu=force_quick_gelu,
            force_context_length=context_length, force_preprocess_cfg=force_preprocess or None,
            device=torch.get_default_device())  # meta under torch.device('meta'): memory plans
    if pretrained is not None:
        load_model_weights(model, pretrained, strict=True, what=what, source=source)
    ctx = getattr(model, 'context_length', None) or getattr(model.text, 'context_length')
    tokenizer = open_clip.get_tokenizer(model_name, context_length=ctx)
    return model, tokenizer


def preprocess_like(images: torch.Tensor, cfg: dict) -> torch.Tensor:
    """:func:`clip_preprocess` with an open_clip ``preprocess_cfg`` dict (size, mean, std, ...)."""
    return clip_preprocess(images, cfg['size'], cfg['mean'], cfg['std'],
                           cfg.get('interpolation', 'bicubic'), cfg.get('resize_mode', 'shortest'),
                           cfg.get('fill_color', 0))


def clip_preprocess(images: torch.Tensor, size, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = 'bicubic', resize_mode: str = 'shortest',
                    fill_color: int = 0) -> torch.Tensor:
    """Differentiable CLIP preprocessing of (N, 3, H, W) images in [0, 1].

    Same steps as open_clip's PIL pipeline, with torch ops: resize (antialiased when shrinking)
    so that the shortest side fits and centre-crop (``'shortest'``), or squash to the size
    (``'squash'``), or fit the longest side and pad (``'longest'``); then normalise.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    h, w = images.shape[-2:]
    mode = interpolation
    if mode not in ('bicubic', 'bilinear', 'nearest'):
        raise ValueError(f"unknown interpolation '{interpolation}' (bicubic, bilinear, nearest)")
    if resize_mode == 'squash':
        new_h, new_w = out_h, out_w
    elif resize_mode in ('shortest', 'longest'):
        ratio = (max if resize_mode == 'shortest' else min)(out_h / h, out_w / w)
        new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    else:
        raise ValueError(f"unknown resize_mode '{resize_mode}' (shortest, longest, squash)")
    x = images
    if (new_h, new_w) != (h, w):
        extra = {} if mode == 'nearest' else dict(align_corners=False,
                                                   antialias=new_h < h or new_w < w)
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, **extra)
        if mode == 'bicubic':
            x = x.clamp(0, 1)  # bicubic overshoots; PIL's uint8 output is clipped too
    if (new_h, new_w) != (out_h, out_w):
        if resize_mode == 'longest':
            top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
            x = F.pad(x, (left, out_w - new_w - left, top, out_h - new_h - top),
                      value=fill_color / 255.0)
        else:
            top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
            x = x[..., top:top + out_h, left:left + out_w]
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@REWARDS.register_module()
class ClipScore(BaseReward):
    """CLIP score ``scale * cos(image, prefix + prompt)`` with any open_clip model, local weights.

    Args:
        model_name: open_clip architecture (``'ViT-L-14'``; ``'ViT-L-14-quickgelu'`` or
            ``weights_tag='openai'`` for OpenAI's weights), or a new name for ``model_cfg``.
        pretrained: LOCAL weights file (plain state_dict; ``toy://name`` for a shipped toy
            checkpoint), or None for random weights (tests). Hub tags and names are refused:
            nothing is ever downloaded.
        model_cfg: open_clip model config registering a custom architecture (the toy CLIP:
            :data:`rankekit.rewards.toy_clip.TOY_CLIP_CFG`).
        scale: multiplies the cosine (100 as in the CLIP-score protocol).
        prefix: prepended to every prompt, e.g. ``'A photo depicts '`` (the paper's protocol).
        differentiable: let gradients flow to the images (False: scores under no_grad).
        name: name in logs, default ``clip_score``.
        context_length: overrides the text context length of the architecture.
        weights_tag: open_clip tag the local file comes from (sets QuickGELU and preprocessing).
        preprocess_cfg: overrides of the preprocessing (``mean``, ``std``, ``interpolation``,
            ``resize_mode``, ``size``).
        text_cache_size: text features of at most this many prompt strings are kept.
    """

    differentiable = True
    info_example = dict(type='ClipScore', model_name=TOY_CLIP_NAME, model_cfg=TOY_CLIP_CFG,
                        pretrained=None)

    def __init__(self, model_name: str = 'ViT-L-14', pretrained: str | None = None,
                 model_cfg: dict | None = None, scale: float = 100.0, prefix: str = '',
                 differentiable: bool = True, name: str | None = None,
                 context_length: int | None = None, weights_tag: str | None = None,
                 preprocess_cfg: dict | None = None, text_cache_size: int = 4096):
        super().__init__(name=name, differentiable=differentiable)
        self.model_name, self.scale, self.prefix = model_name, float(scale), prefix
        self.clip, self.tokenizer = build_open_clip(
            model_name, model_cfg=model_cfg, pretrained=pretrained, weights_tag=weights_tag,
            context_length=context_length, preprocess_cfg=preprocess_cfg)
        self.preprocess_cfg = dict(self.clip.visual.preprocess_cfg)
        self.text_cache_size = text_cache_size
        self._text_cache: dict[str, torch.Tensor] = {}
        # stale features after new weights / device / dtype: drop them
        self.register_load_state_dict_pre_hook(lambda *args, **kwargs: self._text_cache.clear())
        self.freeze()

    def _apply(self, fn, *args, **kwargs):
        self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def load_finetuned(self, pretrained: str | None, **kwargs) -> None:
        """Load a checkpoint holding the whole CLIP (HPSv2, PickScore) strictly; ``kwargs`` go
        to :func:`~rankekit.utils.weights.load_model_weights` (``what``, ``source``, ...)."""
        self.pretrained = pretrained
        if pretrained is not None:
            load_model_weights(self.clip, pretrained, strict=True, **kwargs)
            self._text_cache.clear()
            self.freeze()

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the model's normalised input (differentiable)."""
        return preprocess_like(images, self.preprocess_cfg)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features (N, D) of ``prefix + prompt``, cached per prompt string."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            if len(self._text_cache) + len(missing) > self.text_cache_size:
                self._text_cache.clear()
            tokens = self.tokenizer([self.prefix + p for p in missing]).to(self.device)
            feats = self.clip.encode_text(tokens, normalize=True)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        dtype = next(self.clip.visual.parameters()).dtype
        pixels = self.preprocess(images.to(self.device, dtype))
        image_feats = self.clip.encode_image(pixels, normalize=True)
        text_feats = self.encode_prompts(prompts)
        cosine = (image_feats * text_feats).sum(-1)
        return (self.scale * cosine).float().to(images.device)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, model_name={self.model_name!r}, scale={self.scale}, '
                f'prefix={self.prefix!r}')
