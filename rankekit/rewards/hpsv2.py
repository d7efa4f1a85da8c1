"""HPS v2 / v2.1 reward: cosine between an HPS-finetuned open_clip ViT-H-14's image and text.

The HPS checkpoints (HPS_v2_compressed.pt, HPS_v2.1_compressed.pt) hold ``{'state_dict': ...}``
of a full open_clip ViT-H-14 CLIP, so the model is built with rankekit's open_clip helper and the
whole state_dict is loaded strictly; no other weights are needed. Preprocessing is HPS's
evaluation transform, done with differentiable torch ops: resize the longest side to 224
(bicubic), pad the short side with black, normalise with OpenAI's mean/std.
"""
from __future__ import annotations


from rankekit.registry import REWARDS
from rankekit.rewards.clip_score import ClipScore, check_finetuned_path
from rankekit.rewards.toy_clip import TOY_CLIP_NAME

HPS_FILES = {'v2.1': 'HPS_v2.1_compressed.pt', 'v2.0': 'HPS_v2_compressed.pt'}
HPS_SOURCE = ('the Hugging Face model repo xswu/HPSv2 (https://huggingface.co/xswu/HPSv2): '
              'HPS_v2.1_compressed.pt for HPS v2.1 (used by RankE) or HPS_v2_compressed.pt for '
              'HPS v2.0')
DEFAULT_HPS_PATH = 'data/weights/HPS_v2.1_compressed.pt'
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: HPS's evaluation transform (its open_clip fork, ``light_augmentation=True``)
HPS_PREPROCESS = dict(resize_mode='longest', interpolation='bicubic', fill_color=0,
                      mean=OPENAI_MEAN, std=OPENAI_STD)


@REWARDS.register_module()
class HPSv2(ClipScore):
    """Human Preference Score v2/v2.1: ``scale * cos(image, prompt)`` with an HPS ViT-H-14.

    HPS compares images generated for the SAME prompt; its raw cosine is around 0.2-0.3
    (``scale=100`` gives the numbers of the HPS benchmark tables). Gradients flow to the images
    when ``differentiable=True`` (the released RankE only scores with it, without gradients).

    Args:
        pretrained: LOCAL HPS checkpoint (``HPS_v2.1_compressed.pt`` or
            ``HPS_v2_compressed.pt`` from the Hugging Face repo xswu/HPSv2), loaded strictly
            (its ``state_dict`` entry); None builds random weights (tests only, warns).
        scale: multiplies the cosine (1.0: HPS's raw score).
        differentiable: let gradients flow to the images.
        name: name in logs, default ``hpsv2``.
        model_name, model_cfg: the open_clip architecture (ViT-H-14; a tiny custom config in
            tests).
        preprocess_cfg: overrides of :data:`HPS_PREPROCESS`.
        text_cache_size: text features of at most this many prompt strings are kept.
    """

    info_example = dict(type='HPSv2', pretrained=None, model_name=TOY_CLIP_NAME)

    def __init__(self, pretrained: str | None = DEFAULT_HPS_PATH, scale: float = 1.0,
                 differentiable: bool = True, name: str | None = None,
                 model_name: str = 'ViT-H-14', model_cfg: dict | None = None,
                 preprocess_cfg: dict | None = None, text_cache_size: int = 4096):
        what = f'HPSv2 checkpoint (open_clip {model_name} state_dict)'
        check_finetuned_path('HPSv2', pretrained, what, where=DEFAULT_HPS_PATH,
                             source=f'{" or ".join(HPS_FILES.values())} from {HPS_SOURCE}')
        super().__init__(model_name=model_name, pretrained=None, model_cfg=model_cfg,
                         scale=scale, prefix='', differentiable=differentiable,
                         name=name or 'hpsv2',
                         preprocess_cfg={**HPS_PREPROCESS, **(preprocess_cfg or {})},
                         text_cache_size=text_cache_size)
        # the file is {'state_dict': ...} (possibly fp16): found and cast by the loader
        self.load_finetuned(pretrained, what=what, source=HPS_SOURCE, where=DEFAULT_HPS_PATH)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, pretrained={self.pretrained!r}'
