# Alternating schedule: 4 policy-only iterations, then 4 decoder-only iterations.
_base_ = ['../ranke/ranke_toy.py']
default_hooks = dict(coevolution=dict(schedule='alternate', policy_iters=4, decoder_iters=4))
