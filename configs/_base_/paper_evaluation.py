# The paper's evaluation protocol (docs/evaluation.md), read by rankekit.evaluation.protocols
# and tools/eval_geneval.py (docs/evaluation.md). Nothing here runs during training. The leaf
# configs set the paths; a path left None skips that benchmark.
paper_eval = dict(
    # sampling of every benchmark: prompt i has its own seed
    # (rankekit.evaluation.generation.prompt_seeds, as tools/sample.py), so images do not depend
    # on the batch size
    sampling=dict(policy='online', decoder='ema', batch_size=32, seed=0),
    # MS-COCO 30K: val2014 captions cycled to 30k; FID = clean-fid ('clean' mode, Inception-v3)
    # against the val2014 images centre-cropped and resized to the model resolution; CLIP score =
    # OpenAI CLIP ViT-B/32 (NOT the training reward), "A photo depicts " + caption, cosine x100
    coco=dict(captions=None, real_folder=None, num_images=30000, fid_mode='clean',
              clip=dict(type='ClipScore', model_name='ViT-B-32', weights_tag='openai',
                        pretrained=None),
              caption_prefix='A photo depicts '),
    # HPSv2 benchmark: HPS v2.1 on the HPDv2 benchmark prompts (anime, concept-art, paintings,
    # photo: 800 each), per style and their average (raw cosine)
    hpsv2=dict(prompts_dir=None, reward=dict(type='HPSv2', pretrained=None)),
    # GenEval: 553 prompts x 4 images, scored by the GenEval repo in its own environment
    geneval=dict(metadata=None, images_per_prompt=4, repo=None, python=None, detector=None))
