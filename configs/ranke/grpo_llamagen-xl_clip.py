# Standard RL ("Std. RL" of the paper) on LlamaGen-XL with the CLIP reward: the same GRPO + KL
# policy phase on the same rollouts, the decoder frozen. Paper (MS-COCO 30K): CLIP 32.45,
# FID 17.76, GenEval 0.417. Asset paths: see ranke_llamagen-xl_clip.py.
_base_ = ['./ranke_llamagen-xl_clip.py']
default_hooks = dict(coevolution=dict(train_mode='policy'))
