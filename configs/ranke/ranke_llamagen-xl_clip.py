# RankE on LlamaGen-XL (256 px) with the CLIP ViT-L/14 reward, as released: one shared rollout
# of 4 prompts x G=8 per GPU and step (32 x 8 on 8 GPUs), then the policy and decoder updates;
# 6k steps. Paper (MS-COCO 30K): CLIP 33.76, FID 15.21, GenEval 0.425.
_base_ = ['../_base_/models/ranke_llamagen-xl.py', '../_base_/datasets/image_caption.py',
          '../_base_/schedules/ranke_real.py', '../_base_/paper_evaluation.py',
          '../_base_/ranke_runtime.py']

# ---- assets (docs/prepare_assets.md): edit here or override keys with --cfg-options ---------
# (the evaluation benchmarks' paths: configs/_base_/paper_evaluation.py)
weights_root = 'data/weights'  # every weight file / folder below
data_root = 'data/coco'        # COCO: train2014/, val2014/, annotations/captions_*2014.json

model = dict(
    tokenizer=dict(pretrained=f'{weights_root}/vq_ds16_t2i.pt'),
    policy=dict(pretrained=f'{weights_root}/t2i_XL_stage1_256.pt'),
    text_encoder=dict(model_dir=f'{weights_root}/flan-t5-xl'),
    # OpenAI CLIP ViT-L/14, cosine x 100, differentiable (also drives the decoder's reward term)
    rewards=[dict(type='ClipScore', model_name='ViT-L-14', weights_tag='openai',
                  pretrained=f'{weights_root}/open_clip_ViT-L-14_openai.bin', scale=100.0,
                  name='clip')],
    perceptual_loss=dict(backbone_weights=f'{weights_root}/vgg16-397923af.pth'))
train_dataloader = dict(dataset=dict(data_root=data_root))

default_hooks = dict(checkpoint=dict(interval=500))
