# Study, attribute reward: grpo_toy rewarded by the toy attribute classifier (product of the
# probabilities of the prompted attributes, in [0, 1]) instead of the toy CLIP. Rewards near 0
# make a tiny group-std epsilon amplify noise: 0.05 (model_zoo.md).
_base_ = ['../ranke/grpo_toy.py', '../_base_/rewards/toy_attribute.py']
model = dict(rewards=[{{_base_.toy_attribute_reward}}], rank_loss=dict(std_eps=0.05))
