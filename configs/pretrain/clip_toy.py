# The toy CLIP reward (open_clip classes, custom tiny config), trained contrastively on ToyShapes.
_base_ = ['../_base_/datasets/toy_shapes.py', '../_base_/schedules/pretrain_toy.py',
          '../_base_/default_runtime.py']
model = dict(type='ClipPretrainModel', model_name='rankekit-toy-clip')
train_dataloader = dict(batch_size=128)
train_cfg = dict(max_iters=350)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=350, eta_min_ratio=0.02)]
default_hooks = dict(checkpoint=dict(interval=350))
custom_hooks = [dict(type='RichProgressHook', keys=['loss/contrastive', 'acc/i2t'])]
randomness = dict(seed=0)
