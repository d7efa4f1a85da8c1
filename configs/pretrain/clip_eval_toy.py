# The held-out toy CLIP of the toy evaluation (clip_heldout/*): the toy CLIP's recipe with another
# width and training seed; never used as a reward (a test checks every config).
_base_ = ['./clip_toy.py']
model = dict(model_name='rankekit-toy-clip-eval', model_cfg=None)
randomness = dict(seed=1)
