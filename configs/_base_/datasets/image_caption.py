# Real image-caption data for the real-backbone recipes: the prompts of each rollout and the real
# images of the decoder's GT-reconstruction anchor. Default: COCO train2014 (image folder + the
# COCO captions json, one sample per caption); the release does not document its training set,
# any .jsonl / .csv (file_name,caption) / COCO .json captions file works, and so do local
# webdataset tar shards:
#   dataset=dict(type='WebDatasetTars', shards='data/laion/{00000..00099}.tar',
#                pipeline=train_pipeline[1:], on_corrupt='skip')   # no LoadImageFromFile there
# Images: short side resized to image_size (bicubic, antialiased), centre crop, [0, 1] tensors.
# A corrupt image is reported by path and skipped (on_corrupt='error' stops instead).
data_root = 'data/coco'
image_size = 256
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),  # pillow: truncated files raise
    # keep_ratio with a huge long-side bound: the short side lands exactly on image_size
    dict(type='Resize', scale=(image_size, 1000 * image_size), keep_ratio=True,
         interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackImageCaption'),
]
train_dataloader = dict(
    batch_size=4,  # prompts per GPU and step (x G rollouts each)
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=True),  # seeded by the run's seed
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageCaptionFolder', data_root=data_root,
                 captions_file='annotations/captions_train2014.json', image_prefix='train2014',
                 pipeline=train_pipeline, on_corrupt='skip'))
