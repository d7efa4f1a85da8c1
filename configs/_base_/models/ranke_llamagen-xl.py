# RankE on LlamaGen-XL (t2i, 256 px): the EFFECTIVE settings of the released scripts
# (each value's comment says where it comes from). Architectures and hyper-parameters only: the
# leaf configs set the weight files (pretrained=...) and the reward(s).
model = dict(
    type='RankEModel',
    # VQ-16: 16384 codes of dim 8, 16x16 grid at 256 px; encoder + codebook frozen, decoder trains
    tokenizer=dict(type='VQModel', arch='VQ-16', image_size=256),
    # GPT-XL t2i: 36 layers, dim 1280, 120 caption tokens of dim 2048, 256 image tokens
    policy=dict(type='LlamaGenGPT', arch='GPT-XL'),
    # flan-t5-xl encoder, LlamaGen's left-padded (B, 120, 2048) caption embeddings, frozen
    text_encoder=dict(type='T5TextEncoder', max_length=120, dtype='bf16'),
    reward_normalize='none',  # implemented but off in the release
    # ---- policy phase ("latent ranking") ------------------------------------------------------
    # GRPO: A = (r - mean_G) / std_G (unbiased std, 0 when std < 1e-4), clamped to [-5, 5];
    # PPO clip 0.2
    rank_loss=dict(type='GRPOLoss', clip_eps=0.2, std_eps=1e-4, adv_clamp=5.0,
                   aggregation='token_mean', std='unbiased'),
    # k2 KL, beta * mean 0.5 (logp - logp_ref)^2, to the frozen initial policy
    policy_anchor=dict(type='KLAnchor', weight=0.05, estimator='k2', reference='initial'),
    # ---- decoder phase ("pixel ranking") ------------------------------------------------------
    # top-K softmax weights; K=1 (released) keeps only the best of the G rollouts with weight 1,
    # so every kept weight is 1 ("best-of-G") and tau (annealed 4 -> 1 by the hook) has no effect
    rank_weights=dict(type='TopKSoftmaxWeights', top_k=1, tau=4.0),
    # EMA-consistency anchor: lambda_c * LPIPS(D(z), D_ema(z)), lambda_c = 10 for LlamaGen
    decoder_anchor=dict(type='EMAAnchor', weight=10.0, distance='perceptual'),
    perceptual_loss=dict(type='LPIPSLoss', net='vgg'),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3, ndf=64, n_layers=3),
    # G=8 rollouts per prompt, CFG 6, temperature 1, top-k 1000, all 256 tokens; the EMA decoder
    # renders them for the reward
    rollout=dict(group_size=8, cfg_scale=6.0, cfg_first_n=None, temperature=1.0, top_k=1000,
                 top_p=1.0, decode_with='ema'),
    # one PPO epoch per rollout; policy EMA 0.999 updated every 10 policy steps; log-probs with
    # the sampler's causal caption mask (the release's is bidirectional: `rankekit info release`)
    policy_cfg=dict(inner_epochs=1, ema_decay=0.999, ema_interval=10,
                    caption_attention='causal'),
    decoder_cfg=dict(
        ema_decay=0.99,  # D_ema, one update per decoder step
        # GT reconstruction anchor: L1 + LPIPS(VGG) + adaptive hinge GAN (x gan_weight), weight 1
        l1_weight=1.0, perceptual_weight=1.0, recon_weight=1.0, adaptive_gan_weight=True,
        # discriminator: 0.5 x VQGAN's halved hinge (0.25 x the two hinge terms) on real vs GT
        # reconstructions, from decoder step 100; its gradient is not clipped (schedule)
        gan_weight=0.5, disc_weight=0.5, disc_start=100, disc_sees_policy=False,
        # policy decodes and EMA targets clamped to [-1, 1] before every term on policy tokens
        clamp_policy_decodes=True,
        # rank-weighted GAN on policy decodes: -mean(w * Disc(D(z))) * 1.0 * gan_weight (0.5)
        rank_gan_weight=1.0,
        # rank-weighted reward backprop: -lambda_d * mean(w * r(D(z))), differentiable rewards
        reward_weight=0.01,
        policy_decode='selected',  # only the rollouts with a non-zero rank weight are decoded
        lasc_weight=0.0, lasc_top_k=20))  # LASC: off in the released runs
