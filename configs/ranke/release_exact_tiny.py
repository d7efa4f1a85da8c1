# The RankE release's training iteration on tiny official-format weights: every setting where
# rankekit may differ from syjmelody/RankE @2798acc set to the release's value
# (rankekit/models/release.py, `rankekit info release`). It is the model of the equivalence test
# (tests/test_release_equivalence.py), which matches one iteration of this config against the
# official trainer's outputs in tests/data/official_step/. Text encoder, reward and LPIPS trunk
# are that data's stand-ins (tests/release_standins.py), so run it through the test.
_base_ = ['../_base_/default_runtime.py']
custom_imports = dict(imports=['release_standins'], allow_failed_imports=False)
_ref = 'tests/data/reference'
model = dict(
    type='RankEModel',
    # official VQModel (ch 128 hard-coded) with codebook 64 x 8, l2-normalised, 8x8 codes of 16 px
    tokenizer=dict(type='VQModel', ch=128, num_res_blocks=2, encoder_ch_mult=[1, 1],
                   decoder_ch_mult=[1, 1], z_channels=32, codebook_size=64, codebook_embed_dim=8,
                   image_size=16, pretrained=f'{_ref}/vq_tiny.pt'),
    policy=dict(type='LlamaGenGPT', dim=64, n_layer=2, n_head=4, vocab_size=64, block_size=64,
                cls_token_num=120, caption_dim=32, pretrained=f'{_ref}/gpt_tiny_cls120.pt'),
    text_encoder=dict(type='ReleaseFixedCaptions'),
    rewards=[dict(type='ReleaseToyReward')],
    reward_normalize='none',
    # D1: unbiased group std; flat below 1e-4; advantages clamped to [-5, 5]
    rank_loss=dict(type='GRPOLoss', clip_eps=0.2, std_eps=1e-4, adv_clamp=5.0, std='unbiased'),
    policy_anchor=dict(type='KLAnchor', weight=0.05, estimator='k2', reference='initial'),
    # K=2 here so that the softmax weights (tau 4 -> 1) are exercised; the release's scripts use 1
    rank_weights=dict(type='TopKSoftmaxWeights', top_k=2, tau=4.0, mean_eps=1e-8),
    decoder_anchor=dict(type='EMAAnchor', weight=10.0, distance='perceptual'),
    # the test points these at the seeded random VGG16 trunk and the stored lin layers
    perceptual_loss=dict(type='LPIPSLoss', net='vgg'),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3, ndf=64, n_layers=2),
    # the release samples with CFG 6, top-k 1000 (> 64 codes: no filtering); the test forces
    # the tokens it drew
    rollout=dict(group_size=4, cfg_scale=6.0, temperature=1.0, top_k=0, decode_with='ema'),
    # the caption block of the release's log-prob mask is bidirectional; EMA every step here
    policy_cfg=dict(inner_epochs=1, ema_decay=0.999, ema_interval=1, logprobs='conditional',
                    caption_attention='bidirectional'),
    decoder_cfg=dict(
        ema_decay=0.99, l1_weight=1.0, perceptual_weight=1.0, recon_weight=1.0,
        adaptive_gan_weight=True, gan_weight=0.5, disc_start=0,
        disc_weight=0.5,              # D3: 0.5 x VQGAN's halved hinge = 0.25 x the hinge terms
        clamp_policy_decodes=True,    # D2: policy decodes and EMA targets clamped to [-1, 1]
        rank_gan_weight=1.0, reward_weight=0.01, disc_sees_policy=False,
        policy_decode='selected', lasc_weight=0.0, lasc_codebook='raw',
        lasc_logits='conditional'))
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=1e-6, betas=(0.9, 0.999), eps=1e-8,
                               weight_decay=0.01),
                clip_grad=dict(max_norm=1.0)),
    decoder=dict(optimizer=dict(type='AdamW', lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.01),
                 clip_grad=dict(max_norm=1.0)),
    # D3: the release never clips the discriminator
    discriminator=dict(optimizer=dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=0.01)))
train_dataloader = dict(batch_size=2, num_workers=0, dataset=dict(type='ReleaseRealImages'),
                        sampler=dict(type='DefaultSampler', shuffle=False),
                        collate_fn=dict(type='default_collate'))
# tau 4 -> 1 by cosine over the first 20% of 10 iterations, both phases on every rollout
train_cfg = dict(type='IterBasedTrainLoop', max_iters=10)
default_hooks = dict(
    coevolution=dict(type='CoEvolutionHook', schedule='sync', train_mode='both',
                     tau=dict(type='cosine', start=4.0, end=1.0, stop=0.2)))
