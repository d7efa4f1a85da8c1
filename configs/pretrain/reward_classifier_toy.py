# The attribute-classifier reward's network: same task as the feature net but a different width
# and seed, so that FID / accuracy are not measured by the network the policy is rewarded by.
_base_ = ['./feature_net_toy.py']
model = dict(net={{_base_.toy_reward_classifier}})
train_cfg = dict(max_iters=450)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=450, eta_min_ratio=0.02)]
default_hooks = dict(checkpoint=dict(interval=450))
randomness = dict(seed=1)
