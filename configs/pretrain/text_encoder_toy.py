# The toy text encoder, pretrained on captions alone and then frozen (the role of LlamaGen's T5):
# its mean-pooled embedding must tell which colour, shape and size sits at each position.
_base_ = ['../_base_/models/toy_backbone.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/pretrain_toy.py', '../_base_/default_runtime.py']
model = dict(type='TextEncoderPretrainModel', text_encoder={{_base_.toy_text_encoder}})
train_dataloader = dict(batch_size=128)
train_cfg = dict(max_iters=5000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=5000, eta_min_ratio=0.02)]
default_hooks = dict(checkpoint=dict(interval=2500))
custom_hooks = [dict(type='RichProgressHook', keys=['loss/ce', 'acc/attr'])]
randomness = dict(seed=0)
