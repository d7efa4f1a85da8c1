# Study 4 decomposition: RankE (release-exact) with only D3 reverted: the discriminator's loss
# twice the release's (1.0 x VQGAN's halved hinge) and its gradient clipped at 1.0, as in study 3.
_base_ = ['../ablation/anchor_ema.py']
model = dict(decoder_cfg=dict(disc_weight=1.0))
optim_wrapper = dict(discriminator=dict(clip_grad=dict(max_norm=1.0)))
