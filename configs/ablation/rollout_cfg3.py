# Rollouts with CFG 3 and top-k 64 (the toy recipe samples unguided; the real recipes use CFG 6/5
# and top-k 1000), log-probs conditional-only as released: the baseline of logprobs_sampler.py.
_base_ = ['../ranke/ranke_toy.py']
model = dict(rollout=dict(cfg_scale=3.0, top_k=64))
