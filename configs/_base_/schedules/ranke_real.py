# The released RankE schedule on real backbones: 6k iterations of 32 prompts x G=8 rollouts on
# 8 GPUs, i.e. train_dataloader.batch_size=4 prompts per GPU (set in the dataset config). The
# released scripts run until killed; here the step budget is explicit.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=6000)
# AdamW (wd 0.01), grad-clip 1.0 on policy and decoder; the lrs the released code really uses
# (its lr flags are silently ignored): policy 1e-6, decoder 1e-5, discriminator 2e-5; constant,
# no warm-up
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=1e-6, weight_decay=0.01),
                clip_grad=dict(max_norm=1.0)),
    decoder=dict(optimizer=dict(type='AdamW', lr=1e-5, weight_decay=0.01),
                 clip_grad=dict(max_norm=1.0)),
    # the release clips policy and decoder only (the discriminator's gradient norm is ~7-26)
    discriminator=dict(optimizer=dict(type='AdamW', lr=2e-5, weight_decay=0.01)))
