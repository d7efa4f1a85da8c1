# The toy world's evaluation: FID (toy feature net, never trained against), two toy CLIP scores,
# compositional accuracy (toy GenEval) and the latent covariate shift (LCS-KL, token entropy).
# clip_heldout/* is a second toy CLIP (other width and seed) that nothing trains against, as the
# paper evaluates with CLIP ViT-B/32 what it trains against ViT-L/14; clip_train/* is the toy CLIP
# reward itself (the decoder's reward term can game it directly). Studies 1-3 had only the
# latter, as clip_score/*.
# Real statistics are cached under work_dirs/.cache (recomputed when stale). Sample counts are
# sized so that the spread over sampling seeds (~1 FID) is small against the differences the
# study reports; fid/real_floor and lcs/real_floor are the FID and LCS-KL of 2,000 real val
# images (the prompts' own images, disjoint from the reference): what a perfect model scores.
val_evaluator = [
    dict(type='FIDMetric',
         feature_extractor=dict(type='ToyFeatureNet', width=32, feat_dim=64,
                                pretrained='toy://feature_net.pt'),
         real=dict(type='ToyShapes', split='test', num_samples=5000),
         floor_real=dict(type='ToyShapes', split='val', num_samples=2000),
         reference_cache='work_dirs/.cache/toy_fid_test5000.npz'),
    dict(type='ClipScoreMetric', caption_prefix='', prefix='clip_heldout',
         clip=dict(type='ClipScore', model_name='rankekit-toy-clip-eval',
                   pretrained='toy://clip_eval.pt')),
    dict(type='ClipScoreMetric', caption_prefix='', prefix='clip_train',
         clip=dict(type='ClipScore', model_name='rankekit-toy-clip', pretrained='toy://clip.pt')),
    dict(type='CompositionalAccuracy',
         feature_net=dict(type='ToyFeatureNet', width=32, feat_dim=64,
                          pretrained='toy://feature_net.pt')),
    dict(type='LCSMetric',
         tokenizer=dict(type='VQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 2],
                        decoder_ch_mult=[1, 1, 2], z_channels=64, codebook_size=256,
                        codebook_embed_dim=8, image_size=32, pretrained='toy://vq.pt'),
         real=dict(type='ToyShapes', split='test', num_samples=4000),
         floor_real=dict(type='ToyShapes', split='val', num_samples=2000),
         reference_cache='work_dirs/.cache/toy_lcs_test4000.npz'),
]
val_cfg = dict(type='ValLoop')
# evaluation: captions (and attributes) of the val split; the model generates one image each
val_dataloader = dict(
    batch_size=50,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ToyShapes', split='val', num_samples=2000))
