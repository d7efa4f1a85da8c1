# The toy RankE schedule: one rollout of 8 prompts x G=8 per iteration, both phases each time.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300)
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=2e-5, weight_decay=0.01),
                clip_grad=dict(max_norm=1.0)),
    decoder=dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01),
                 clip_grad=dict(max_norm=1.0)),
    # the release clips policy and decoder only (the discriminator's gradient norm is ~7-26)
    discriminator=dict(optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.01)))
