custom_hooks = [
    dict(
        keys=[
            'reward/mean',
            'policy/kl',
            'decoder/l1',
            'decoder/anchor',
        ],
        type='RichProgressHook'),
    dict(
        interval=50,
        num_prompts=64,
        num_real=128,
        real=dict(num_samples=128, split='test', type='ToyShapes'),
        type='CovariateShiftMonitorHook'),
    dict(
        combos=[
            'online:ema',
            'online:base',
        ],
        interval=100,
        num_prompts=8,
        type='ImageGridHook'),
]
default_hooks = dict(
    checkpoint=dict(
        by_epoch=False,
        interval=200,
        max_keep_ckpts=3,
        save_last=True,
        type='SafeCheckpointHook'),
    coevolution=dict(
        schedule='sync',
        tau=dict(end=1.0, start=4.0, stop=0.2, type='cosine'),
        train_mode='both',
        type='CoEvolutionHook'),
    logger=dict(interval=10, log_metric_by_epoch=False, type='LoggerHook'),
    param_scheduler=dict(type='ParamSchedulerHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    summary=dict(type='TrainingSummaryHook'),
    timer=dict(type='IterTimerHook'))
default_scope = 'rankekit'
env_cfg = dict(
    cudnn_benchmark=False,
    dist_cfg=dict(backend='nccl'),
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0))
launcher = 'none'
load_from = None
log_level = 'INFO'
log_processor = dict(by_epoch=False, window_size=10)
model = dict(
    decoder_anchor=dict(distance='perceptual', type='EMAAnchor', weight=10.0),
    decoder_cfg=dict(
        disc_sees_policy=True,
        disc_start=50,
        disc_weight=0.5,
        ema_decay=0.99,
        gan_weight=0.5,
        l1_weight=1.0,
        lasc_weight=0.0,
        perceptual_weight=1.0,
        rank_gan_weight=1.0,
        reward_weight=0.01),
    discriminator=dict(
        n_layers=2,
        ndf=32,
        pretrained='toy://vq_disc.pt',
        type='PatchGANDiscriminator'),
    perceptual_loss=dict(
        net=dict(
            feat_dim=96,
            pretrained='toy://reward_classifier.pt',
            type='ToyFeatureNet',
            width=24),
        type='ToyPerceptualLoss'),
    policy=dict(
        block_size=64,
        caption_dim=64,
        class_dropout_prob=0.1,
        cls_token_num=16,
        dim=128,
        ffn_dropout_p=0.0,
        n_head=4,
        n_layer=4,
        pretrained='toy://policy.pt',
        resid_dropout_p=0.0,
        token_dropout_p=0.0,
        type='LlamaGenGPT',
        vocab_size=256),
    policy_anchor=dict(
        estimator='k2', reference='initial', type='KLAnchor', weight=0.05),
    policy_cfg=dict(ema_decay=0.999, ema_interval=10, inner_epochs=1),
    rank_loss=dict(
        adv_clamp=5.0, clip_eps=0.2, std_eps=0.0001, type='GRPOLoss'),
    rank_weights=dict(tau=1.0, top_k=2, type='TopKSoftmaxWeights'),
    reward_normalize='none',
    rewards=[
        dict(
            model_name='rankekit-toy-clip',
            name='toy_clip',
            pretrained='toy://clip.pt',
            scale=100.0,
            type='ClipScore'),
    ],
    rollout=dict(
        cfg_scale=1.0,
        decode_with='ema',
        group_size=8,
        temperature=1.0,
        top_k=0,
        top_p=1.0),
    text_encoder=dict(
        embed_dim=64,
        max_length=16,
        num_heads=4,
        num_layers=2,
        pretrained='toy://text_encoder.pt',
        type='ToyTextEncoder',
        width=64),
    tokenizer=dict(
        ch=32,
        codebook_embed_dim=8,
        codebook_size=256,
        decoder_ch_mult=[
            1,
            1,
            2,
        ],
        encoder_ch_mult=[
            1,
            1,
            2,
        ],
        image_size=32,
        num_res_blocks=1,
        pretrained='toy://vq.pt',
        type='VQModel',
        z_channels=64),
    type='RankEModel')
model_wrapper_cfg = dict(type='rankekit.RankEDataParallel')
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    decoder=dict(
        clip_grad=dict(max_norm=1.0),
        optimizer=dict(lr=0.0001, type='AdamW', weight_decay=0.01)),
    discriminator=dict(
        clip_grad=dict(max_norm=1.0),
        optimizer=dict(lr=0.0002, type='AdamW', weight_decay=0.01)),
    policy=dict(
        clip_grad=dict(max_norm=1.0),
        optimizer=dict(lr=2e-05, type='AdamW', weight_decay=0.01)))
randomness = dict(deterministic=False, seed=0)
resume = False
runner_type = 'SafeRunner'
toy_clip = dict(
    model_name='rankekit-toy-clip',
    name='toy_clip',
    pretrained='toy://clip.pt',
    scale=100.0,
    type='ClipScore')
toy_discriminator = dict(n_layers=2, ndf=32, type='PatchGANDiscriminator')
toy_feature_net = dict(feat_dim=64, type='ToyFeatureNet', width=32)
toy_policy = dict(
    block_size=64,
    caption_dim=64,
    class_dropout_prob=0.1,
    cls_token_num=16,
    dim=128,
    ffn_dropout_p=0.0,
    n_head=4,
    n_layer=4,
    resid_dropout_p=0.0,
    token_dropout_p=0.0,
    type='LlamaGenGPT',
    vocab_size=256)
toy_reward_classifier = dict(feat_dim=96, type='ToyFeatureNet', width=24)
toy_text_encoder = dict(
    embed_dim=64,
    max_length=16,
    num_heads=4,
    num_layers=2,
    type='ToyTextEncoder',
    width=64)
toy_tokenizer = dict(
    ch=32,
    codebook_embed_dim=8,
    codebook_size=256,
    decoder_ch_mult=[
        1,
        1,
        2,
    ],
    encoder_ch_mult=[
        1,
        1,
        2,
    ],
    image_size=32,
    num_res_blocks=1,
    type='VQModel',
    z_channels=64)
train_cfg = dict(
    max_iters=600,
    type='IterBasedTrainLoop',
    val_begin=1000000,
    val_interval=300)
train_dataloader = dict(
    batch_size=8,
    collate_fn=dict(type='default_collate'),
    dataset=dict(cache=True, image_size=32, split='train', type='ToyShapes'),
    num_workers=0,
    sampler=dict(shuffle=True, type='DefaultSampler'))
val_cfg = dict(type='ValLoop')
val_dataloader = dict(
    batch_size=50,
    collate_fn=dict(type='default_collate'),
    dataset=dict(num_samples=2000, split='val', type='ToyShapes'),
    num_workers=0,
    sampler=dict(shuffle=False, type='DefaultSampler'))
val_evaluator = [
    dict(
        feature_extractor=dict(
            feat_dim=64,
            pretrained='toy://feature_net.pt',
            type='ToyFeatureNet',
            width=32),
        floor_real=dict(num_samples=2000, split='val', type='ToyShapes'),
        real=dict(num_samples=5000, split='test', type='ToyShapes'),
        reference_cache='work_dirs/.cache/toy_fid_test5000.npz',
        type='FIDMetric'),
    dict(
        caption_prefix='',
        clip=dict(
            model_name='rankekit-toy-clip',
            pretrained='toy://clip.pt',
            type='ClipScore'),
        type='ClipScoreMetric'),
    dict(
        feature_net=dict(
            feat_dim=64,
            pretrained='toy://feature_net.pt',
            type='ToyFeatureNet',
            width=32),
        type='CompositionalAccuracy'),
    dict(
        floor_real=dict(num_samples=2000, split='val', type='ToyShapes'),
        real=dict(num_samples=4000, split='test', type='ToyShapes'),
        reference_cache='work_dirs/.cache/toy_lcs_test4000.npz',
        tokenizer=dict(
            ch=32,
            codebook_embed_dim=8,
            codebook_size=256,
            decoder_ch_mult=[
                1,
                1,
                2,
            ],
            encoder_ch_mult=[
                1,
                1,
                2,
            ],
            image_size=32,
            num_res_blocks=1,
            pretrained='toy://vq.pt',
            type='VQModel',
            z_channels=64),
        type='LCSMetric'),
]
vis_backends = [
    dict(type='LocalVisBackend'),
]
visualizer = dict(
    name='visualizer',
    type='Visualizer',
    vis_backends=[
        dict(type='LocalVisBackend'),
    ])
work_dir = '/work/main/work_dirs/study3/disc_sees_policy/seed0'
