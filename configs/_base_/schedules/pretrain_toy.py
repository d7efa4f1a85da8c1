# Iteration-based schedule for the toy pretraining recipes (leaf configs set max_iters / lr).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=600)
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=600, eta_min_ratio=0.02)]
