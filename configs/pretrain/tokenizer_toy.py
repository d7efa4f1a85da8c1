# The toy VQ tokenizer (LlamaGen's VQModel class, 8x8 grid of 256 codes): warm-up without
# quantisation, k-means codebook initialisation, dead-code resets
# (rankekit/toy/pretrain_tokenizer.py).
_base_ = ['../_base_/models/toy_backbone.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/pretrain_toy.py', '../_base_/default_runtime.py']
model = dict(type='VQPretrainModel', tokenizer={{_base_.toy_tokenizer}}, warmup_iters=100,
             reset_interval=20)
train_dataloader = dict(batch_size=32)
train_cfg = dict(max_iters=1200)
optim_wrapper = dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.9), weight_decay=0.0))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=1200,
                        eta_min_ratio=0.05)]
default_hooks = dict(checkpoint=dict(interval=1200))
custom_hooks = [dict(type='RichProgressHook', keys=['psnr', 'codebook/usage', 'loss/recon'])]
randomness = dict(seed=0)
