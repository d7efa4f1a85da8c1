# Study: the attribute reward in the drift-prone regime (no KL anchor, policy lr 5e-5).
_base_ = ['./decoder_recon_only_attr.py']
model = dict(policy_anchor=None)
optim_wrapper = dict(policy=dict(optimizer=dict(lr=5e-5)))
