# The discriminator also sees the policy's decodes as fakes (the release never shows them).
_base_ = ['../ranke/ranke_toy.py']
model = dict(decoder_cfg=dict(disc_sees_policy=True))
