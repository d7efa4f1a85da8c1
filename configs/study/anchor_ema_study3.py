# RankE with all three deviations of issue 25 reverted (population advantage std, unclamped policy
# decodes, study 3's discriminator loss and clipping): the code of study 3. Study 4 trains it at
# seed 0 to check that nothing else changed (it must give study 3's anchor_ema seed 0 again).
_base_ = ['./anchor_ema_study3_disc.py']
model = dict(rank_loss=dict(std='population'), decoder_cfg=dict(clamp_policy_decodes=False))
