# RankE on Janus-Pro-1B (384 px, 576 tokens) with the CLIP ViT-L/14 reward, as released: 4
# prompts x G=8 per GPU and step (32 x 8 on 8 GPUs), 6k steps. Paper (MS-COCO 30K): CLIP 33.86,
# FID 25.19, GenEval 0.750. With HPSv2 instead of CLIP the release uses KL beta 0.01
# (model.policy_anchor.weight=0.01).
_base_ = ['../_base_/models/ranke_janus-pro-1b.py', '../_base_/datasets/image_caption.py',
          '../_base_/schedules/ranke_real.py', '../_base_/paper_evaluation.py',
          '../_base_/ranke_runtime.py']

# ---- assets (docs/prepare_assets.md): edit here or override keys with --cfg-options ---------
# (the evaluation benchmarks' paths: configs/_base_/paper_evaluation.py)
weights_root = 'data/weights'                 # every weight file / folder below
janus_dir = f'{weights_root}/Janus-Pro-1B'    # config.json, weights, tokenizer files
data_root = 'data/coco'                       # COCO train2014/, val2014/, annotations/

model = dict(
    tokenizer=dict(pretrained=janus_dir),     # reads the gen_vision_model.* keys only
    policy=dict(pretrained=janus_dir),
    text_encoder=dict(tokenizer_path=janus_dir),
    rewards=[dict(type='ClipScore', model_name='ViT-L-14', weights_tag='openai',
                  pretrained=f'{weights_root}/open_clip_ViT-L-14_openai.bin', scale=100.0,
                  name='clip')],
    perceptual_loss=dict(backbone_weights=f'{weights_root}/vgg16-397923af.pth'))

# Janus generates 384 px images: the real images of the GT-reconstruction anchor match it
image_size = 384
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='Resize', scale=(image_size, 1000 * image_size), keep_ratio=True,
         interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackImageCaption'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))

default_hooks = dict(checkpoint=dict(interval=500))
