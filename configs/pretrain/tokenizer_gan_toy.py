# Stage 2 of the toy VQ tokenizer, trained like LlamaGen's VQ: L1 + perceptual + adaptive hinge
# GAN against a PatchGAN discriminator, until it plateaus (model_zoo.md). This is RankE's
# decoder-phase reconstruction objective (same terms, weights and discriminator). The encoder and
# codebook of stage 1 (tokenizer_toy.py, vq_l1.pt) stay frozen: the codes do not change.
_base_ = ['../_base_/models/tokenizer_gan_toy.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/pretrain_toy.py', '../_base_/default_runtime.py']
model = dict(tokenizer=dict(pretrained='toy://vq_l1.pt'),
             perceptual_loss=dict(net=dict(pretrained='toy://reward_classifier.pt')))
train_dataloader = dict(batch_size=16)
train_cfg = dict(max_iters=2400)
optim_wrapper = dict(
    _delete_=True,
    constructor='MultiOptimWrapperConstructor',
    tokenizer=dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.5, 0.9), weight_decay=0.01),
                   clip_grad=dict(max_norm=1.0)),
    discriminator=dict(optimizer=dict(type='AdamW', lr=2e-4, betas=(0.5, 0.9),
                                      weight_decay=0.01),
                       clip_grad=dict(max_norm=1.0)))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=2400,
                        eta_min_ratio=0.05)]
default_hooks = dict(checkpoint=dict(interval=400, max_keep_ckpts=10))
custom_hooks = [dict(type='RichProgressHook',
                     keys=['psnr', 'loss/perceptual', 'loss/gan', 'loss/disc'])]
randomness = dict(seed=0)
