# The paper's evaluation protocol (docs/evaluation.md), read by rankekit.evaluation.protocols
# and tools/eval_geneval.py (docs/evaluation.md). Nothing here runs during training. The paths
# are the layout of docs/prepare_assets.md (the real recipes' roots); override them with
# --cfg-options paper_eval.coco.real_folder=..., and set one to None to skip that benchmark.
# (double-underscore names stay out of the config: the leaf configs have roots of their own)
__coco = 'data/coco'        # COCO: val2014/, annotations/captions_val2014.json
__eval = 'data/eval'        # HPDv2 / GenEval prompts and the GenEval repo
__weights = 'data/weights'  # the evaluators' weights
paper_eval = dict(
    # sampling of every benchmark: prompt i has its own seed
    # (rankekit.evaluation.generation.prompt_seeds, as tools/sample.py), so images do not depend
    # on the batch size
    sampling=dict(policy='online', decoder='ema', batch_size=32, seed=0),
    # MS-COCO 30K: val2014 captions cycled to 30k; FID = clean-fid ('clean' mode, Inception-v3)
    # against the val2014 images centre-cropped and resized to the model resolution; CLIP score =
    # OpenAI CLIP ViT-B/32 (NOT the training reward), "A photo depicts " + caption, cosine x100
    coco=dict(captions=f'{__coco}/annotations/captions_val2014.json',
              real_folder=f'{__coco}/val2014', num_images=30000, fid_mode='clean',
              clip=dict(type='ClipScore', model_name='ViT-B-32', weights_tag='openai',
                        pretrained=f'{__weights}/open_clip_ViT-B-32_openai.bin'),
              caption_prefix='A photo depicts '),
    # HPSv2 benchmark: HPS v2.1 on the HPDv2 benchmark prompts (anime, concept-art, paintings,
    # photo: 800 each), per style and their average (raw cosine)
    hpsv2=dict(prompts_dir=f'{__eval}/hpdv2/benchmark',
               reward=dict(type='HPSv2', pretrained=f'{__weights}/HPS_v2.1_compressed.pt')),
    # GenEval: 553 prompts x 4 images, scored by the GenEval repo in its own environment
    geneval=dict(metadata=f'{__eval}/geneval/prompts/evaluation_metadata.jsonl',
                 images_per_prompt=4, repo=f'{__eval}/geneval', python=None,
                 detector=f'{__weights}/geneval_detector'))
