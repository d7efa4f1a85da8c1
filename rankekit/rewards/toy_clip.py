"""The toy CLIP: an open_clip architecture config small enough to train on a CPU in minutes.

It is a plain open_clip ``CLIP`` (ViT image tower, causal text transformer, open_clip's own BPE
tokenizer), only tiny: 32x32 images in 4x4 patches and 32-token captions. Build it with
``ClipScore(model_name=TOY_CLIP_NAME, model_cfg=TOY_CLIP_CFG, pretrained=path_or_None)``;
train it with :class:`rankekit.toy.pretrain_clip.ClipPretrainModel`.
"""
import copy

TOY_CLIP_NAME = 'rankekit-toy-clip'

TOY_CLIP_CFG = dict(
    embed_dim=64,
    vision_cfg=dict(
        image_size=32,
        patch_size=4,      # 8x8 = 64 patches + class token
        width=64,          # 0.6 s per 128-image step on one core; width 128 costs 2.5x
        layers=3,
        head_width=16,     # 4 heads
        mlp_ratio=2.0,
    ),
    text_cfg=dict(
        context_length=32,  # the longest toy caption is ~15 BPE tokens
        vocab_size=49408,   # open_clip's BPE vocabulary (the tokenizer ships with open_clip)
        width=64,
        heads=4,
        layers=2,
        mlp_ratio=2.0,
    ),
)


#: the held-out toy CLIP of the toy evaluation: another width and training seed, never a reward,
#: as the paper evaluates with ViT-B/32 what it trains against ViT-L/14
TOY_CLIP_EVAL_NAME = 'rankekit-toy-clip-eval'
TOY_CLIP_EVAL_CFG = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, patch_size=4, width=48, layers=3, head_width=12,
                    mlp_ratio=2.0),
    text_cfg=dict(context_length=32, vocab_size=49408, width=48, heads=4, layers=2,
                  mlp_ratio=2.0),
)
#: the toy architectures rankekit ships, by open_clip model name
TOY_CLIP_CONFIGS = {TOY_CLIP_NAME: TOY_CLIP_CFG, TOY_CLIP_EVAL_NAME: TOY_CLIP_EVAL_CFG}


def toy_clip_cfg() -> dict:
    """A fresh copy of :data:`TOY_CLIP_CFG` (configs may edit theirs)."""
    return copy.deepcopy(TOY_CLIP_CFG)
