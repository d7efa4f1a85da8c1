# Decoder-only: the policy stays as pretrained; only the decoder co-evolves with its rollouts.
_base_ = ['../ranke/ranke_toy.py']
default_hooks = dict(coevolution=dict(train_mode='decoder'))
