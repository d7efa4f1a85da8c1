# Study 4 decomposition: RankE (release-exact) with only D2 reverted: the decoder terms on policy
# tokens see the unclamped decodes and EMA targets (rankekit's behaviour in study 3).
_base_ = ['../ablation/anchor_ema.py']
model = dict(decoder_cfg=dict(clamp_policy_decodes=False))
