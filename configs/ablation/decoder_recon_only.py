# Control: standard-RL policy + a decoder trained only on real-image reconstruction (no
# policy-token terms). Separates "co-evolution" from "more decoder training" (model_zoo.md).
_base_ = ['../ranke/ranke_toy.py']
model = dict(decoder_anchor=None,
             decoder_cfg=dict(rank_gan_weight=0.0, reward_weight=0.0, lasc_weight=0.0))
