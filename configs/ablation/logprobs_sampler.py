# logp / logp_old / logp_ref under the distribution the rollouts were drawn from (CFG-combined,
# temperature, top-k) instead of the conditional one (released), so that the PPO ratio and the KL
# anchor estimate what they claim. Under the toy recipe (CFG 1, no top-k) the two are the same,
# so this samples with CFG 3 and top-k 64: compare with rollout_cfg3.py (same rollouts, released
# log-probs). Costs one more (unconditional) teacher-forced pass per policy forward.
_base_ = ['./rollout_cfg3.py']
model = dict(policy_cfg=dict(logprobs='sampler'))
