# Study, drift-prone regime: grpo_toy without the policy's KL anchor and with
# 2.5x the policy learning rate (5e-5), where a first toy run saw a hint of the
# reward-vs-FID trade-off.
_base_ = ['../ranke/grpo_toy.py']
model = dict(policy_anchor=None)
optim_wrapper = dict(policy=dict(optimizer=dict(lr=5e-5)))
