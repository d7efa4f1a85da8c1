# ToyShapes: procedurally drawn captioned shapes (32x32), no files needed.
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),  # seeded by the run's seed
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ToyShapes', split='train', image_size=32, cache=True))
