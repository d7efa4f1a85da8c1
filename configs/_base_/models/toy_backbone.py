# The toy world's networks, in one place. Pretraining configs train them from scratch; RankE
# configs load the shipped checkpoints into them (pretrained='toy://...', the files that
# tools/prepare_toy_assets.py rebuilds).
toy_tokenizer = dict(type='VQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 2],
                     decoder_ch_mult=[1, 1, 2], z_channels=64, codebook_size=256,
                     codebook_embed_dim=8, image_size=32)
toy_text_encoder = dict(type='ToyTextEncoder', embed_dim=64, max_length=16, width=64,
                        num_layers=2, num_heads=4)
toy_policy = dict(type='LlamaGenGPT', dim=128, n_layer=4, n_head=4, vocab_size=256,
                  block_size=64, cls_token_num=16, caption_dim=64, class_dropout_prob=0.1,
                  token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
# the PatchGAN of the tokenizer's GAN stage; RankE's decoder phase continues with it (vq_disc.pt)
toy_discriminator = dict(type='PatchGANDiscriminator', ndf=32, n_layers=2)
# the FID / compositional-accuracy network and, deliberately different (width, seed), the
# attribute classifier that serves as a reward and as the toy LPIPS network
toy_feature_net = dict(type='ToyFeatureNet', width=32, feat_dim=64)
toy_reward_classifier = dict(type='ToyFeatureNet', width=24, feat_dim=96)
# the toy CLIP is only ever a reward: it always comes from its checkpoint
toy_clip = dict(type='ClipScore', model_name='rankekit-toy-clip', scale=100.0,
                pretrained='toy://clip.pt', name='toy_clip')
# the held-out toy CLIP of the evaluation (clip_heldout/*): never a reward
toy_clip_eval = dict(type='ClipScore', model_name='rankekit-toy-clip-eval', scale=100.0,
                     pretrained='toy://clip_eval.pt', name='toy_clip_eval')
