"""PickScore v1 reward: ``exp(logit_scale) * cos(image, prompt)`` with PickScore's CLIP ViT-H/14.

PickScore (Kirstain et al., Pick-a-Pic) is a CLIP ViT-H/14 fine-tuned on human preferences; its
score is the CLIP logit, the learned ``logit_scale.exp()`` times the cosine of the L2-normalised
image and text embeddings (typically about 20 for generated images). The released weights
(``yuvalkirstain/PickScore_v1``) are a Hugging Face ``transformers`` ``CLIPModel`` with the
laion ViT-H-14 sizes. rankekit builds the same network with open_clip's ``ViT-H-14`` architecture
(as for ClipScore and HPSv2) and converts the Hugging Face key names one to one on load
(:func:`hf_clip_to_open_clip`: q/k/v projections concatenated, projections transposed); every
key of the file must be used and every weight of the model set (strict). Nothing else is read:
the tokenizer is open_clip's CLIP BPE (the laion processor's, 77 tokens) and the preprocessing is
the laion processor's (shortest side to 224, bicubic, centre crop, OpenAI mean/std), done with
differentiable torch ops.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch

from rankekit.registry import REWARDS
from rankekit.rewards.clip_score import ClipScore, check_finetuned_path
from rankekit.rewards.hpsv2 import OPENAI_MEAN, OPENAI_STD
from rankekit.rewards.toy_clip import TOY_CLIP_NAME

PICKSCORE_SOURCE = ('the Hugging Face model repo yuvalkirstain/PickScore_v1 '
                    '(https://huggingface.co/yuvalkirstain/PickScore_v1): model.safetensors or '
                    'pytorch_model.bin, a transformers CLIPModel state_dict, about 3.9 GB')
DEFAULT_PICKSCORE_PATH = 'data/weights/PickScore_v1'
#: the laion CLIP-ViT-H-14 processor PickScore is used with
PICKSCORE_PREPROCESS = dict(resize_mode='shortest', interpolation='bicubic', mean=OPENAI_MEAN,
                            std=OPENAI_STD)
#: buffers older transformers versions saved; they hold arange(n), not weights
HF_CLIP_IGNORE = r'^(text|vision)_model\.embeddings\.position_ids$'

_HF_NAMES = {
    'logit_scale': 'logit_scale',
    'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
    'text_model.embeddings.position_embedding.weight': 'positional_embedding',
    'text_model.final_layer_norm.weight': 'ln_final.weight',
    'text_model.final_layer_norm.bias': 'ln_final.bias',
    'vision_model.embeddings.class_embedding': 'visual.class_embedding',
    'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
    'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
    'vision_model.pre_layrnorm.weight': 'visual.ln_pre.weight',  # sic: transformers' spelling
    'vision_model.pre_layrnorm.bias': 'visual.ln_pre.bias',
    'vision_model.post_layernorm.weight': 'visual.ln_post.weight',
    'vision_model.post_layernorm.bias': 'visual.ln_post.bias',
}
_HF_TRANSPOSED = {'text_projection.weight': 'text_projection',
                  'visual_projection.weight': 'visual.proj'}
_HF_TOWERS = {'text_model.encoder.layers.': 'transformer.resblocks.',
              'vision_model.encoder.layers.': 'visual.transformer.resblocks.'}
_HF_BLOCK = {'self_attn.out_proj.': 'attn.out_proj.', 'layer_norm1.': 'ln_1.',
             'layer_norm2.': 'ln_2.', 'mlp.fc1.': 'mlp.c_fc.', 'mlp.fc2.': 'mlp.c_proj.'}
_QKV = re.compile(r'(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$')


def is_hf_clip(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(('text_model.', 'vision_model.')) for k in state)


def hf_clip_to_open_clip(state: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """A ``transformers`` CLIPModel state_dict in open_clip's key layout (a state_dict already in
    open_clip's layout is returned as is).

    Keys it does not know are passed through under their own names, so that a strict load
    reports them; a layer lacking one of its q/k/v projections keeps the ones it has.
    """
    if not is_hf_clip(state):
        return OrderedDict(state)
    out, qkv = OrderedDict(), {}
    for key, value in state.items():
        if key in _HF_NAMES:
            out[_HF_NAMES[key]] = value
        elif key in _HF_TRANSPOSED and value.dim() == 2:
            out[_HF_TRANSPOSED[key]] = value.t().contiguous()
        else:
            hf_prefix = next((p for p in _HF_TOWERS if key.startswith(p)), None)
            rest = key[len(hf_prefix):] if hf_prefix else ''
            match = _QKV.match(rest)
            block = next((b for b in _HF_BLOCK if rest.partition('.')[2].startswith(b)), None)
            if match:
                layer, proj, kind = match.groups()
                qkv.setdefault((_HF_TOWERS[hf_prefix] + layer, kind), {})[proj] = (key, value)
            elif block:
                layer, tail = rest.split('.', 1)
                out[f'{_HF_TOWERS[hf_prefix]}{layer}.{_HF_BLOCK[block]}{tail[len(block):]}'] = value
            else:
                out[key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) == set('qkv'):
            out[f'{layer}.attn.in_proj_{kind}'] = torch.cat([parts[p][1] for p in 'qkv'])
        else:
            out.update(parts.values())
    return out


@REWARDS.register_module()
class PickScore(ClipScore):
    """PickScore v1: ``exp(logit_scale) * cos(image, prompt)`` with PickScore's CLIP ViT-H/14.

    Scores images generated for the SAME prompt against each other (typically about 20;
    Flow-GRPO divides by 26). Gradients flow to the images when ``differentiable=True``.

    Args:
        pretrained: LOCAL weights: the folder of ``yuvalkirstain/PickScore_v1`` (holding
            ``model.safetensors`` or ``pytorch_model.bin``) or one of those files; a
            transformers CLIPModel state_dict (or the same weights in open_clip's layout),
            loaded strictly. None builds random weights (tests only, warns).
        differentiable: let gradients flow to the images.
        name: name in logs, default ``pickscore``.
        model_name, model_cfg: the open_clip architecture (ViT-H-14; a tiny custom config in
            tests, with the same key names).
        preprocess_cfg: overrides of :data:`PICKSCORE_PREPROCESS`.
        text_cache_size: text features of at most this many prompt strings are kept.
    """

    info_example = dict(type='PickScore', pretrained=None, model_name=TOY_CLIP_NAME)

    def __init__(self, pretrained: str | None = DEFAULT_PICKSCORE_PATH,
                 differentiable: bool = True, name: str | None = None,
                 model_name: str = 'ViT-H-14', model_cfg: dict | None = None,
                 preprocess_cfg: dict | None = None, text_cache_size: int = 4096):
        what = f'PickScore weights (CLIP {model_name})'
        check_finetuned_path('PickScore', pretrained, what, source=PICKSCORE_SOURCE,
                             where=DEFAULT_PICKSCORE_PATH)
        super().__init__(model_name=model_name, pretrained=None, model_cfg=model_cfg, scale=1.0,
                         differentiable=differentiable, name=name or 'pickscore',
                         preprocess_cfg={**PICKSCORE_PREPROCESS, **(preprocess_cfg or {})},
                         text_cache_size=text_cache_size)
        self.load_finetuned(pretrained, what=what, source=PICKSCORE_SOURCE,
                            where=DEFAULT_PICKSCORE_PATH, convert=hf_clip_to_open_clip,
                            ignore=HF_CLIP_IGNORE)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cosine = super().score(images, prompts)  # scale=1: the cosine
        return cosine * self.clip.logit_scale.exp().float().to(cosine.device)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, pretrained={self.pretrained!r}'
