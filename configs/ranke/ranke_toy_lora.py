# RankE on the toy world with a LoRA policy (model.lora; pip install "rankekit[lora]"): rank-16
# adapters on every linear layer of the policy's blocks; the reference policy is the adapter
# switched off (no frozen copy), the policy EMA averages the adapters only, checkpoints hold the
# adapters. LoRA takes a larger learning rate than full fine-tuning (not tuned here).
_base_ = ['./ranke_toy.py']
model = dict(lora=dict(r=16, alpha=32))
optim_wrapper = dict(policy=dict(optimizer=dict(lr=2e-4)))
