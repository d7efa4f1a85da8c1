# The toy feature network: FID features + compositional accuracy (the Inception / GenEval roles).
_base_ = ['../_base_/models/toy_backbone.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/pretrain_toy.py', '../_base_/default_runtime.py']
model = dict(type='FeatureNetPretrainModel', net={{_base_.toy_feature_net}})
train_dataloader = dict(batch_size=64)
default_hooks = dict(checkpoint=dict(interval=600))
custom_hooks = [dict(type='RichProgressHook', keys=['loss/ce', 'acc/attr'])]
randomness = dict(seed=0)
