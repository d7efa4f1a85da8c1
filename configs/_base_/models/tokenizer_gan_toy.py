# Decoder training of the toy VQ tokenizer with RankE's decoder-phase reconstruction objective:
# L1 + toy perceptual + adaptive hinge GAN (PatchGAN), encoder and codebook frozen.
_base_ = ['./toy_backbone.py']
model = dict(
    type='VQPretrainModel', tokenizer={{_base_.toy_tokenizer}},
    train_parts='decoder', warmup_iters=0, reset_interval=0, codebook_init=None,
    l1_weight=1.0, l2_weight=0.0, vq_weight=0.0,
    perceptual_loss=dict(type='ToyPerceptualLoss', net={{_base_.toy_reward_classifier}}),
    perceptual_weight=1.0,
    discriminator={{_base_.toy_discriminator}},
    # disc_weight 1.0 x the halved hinge: the 0.5 x (unhalved hinge) the shipped assets were
    # trained with, bit for bit
    gan_weight=0.5, disc_weight=1.0, disc_start=200, adaptive_gan_weight=True)
