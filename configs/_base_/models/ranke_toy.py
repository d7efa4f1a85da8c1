# RankE on the toy world: the toy backbone + toy CLIP reward, the released RankE components.
_base_ = ['./toy_backbone.py']
model = dict(
    type='RankEModel',
    tokenizer={{_base_.toy_tokenizer}},
    policy={{_base_.toy_policy}},
    text_encoder={{_base_.toy_text_encoder}},
    rewards=[{{_base_.toy_clip}}],
    reward_normalize='none',
    # policy phase: GRPO + k2 KL anchor to the frozen initial policy (released: beta 0.05)
    rank_loss=dict(type='GRPOLoss', clip_eps=0.2, std_eps=1e-4, adv_clamp=5.0, std='unbiased'),
    policy_anchor=dict(type='KLAnchor', weight=0.05, estimator='k2', reference='initial'),
    # decoder phase: top-K softmax rank weights, EMA-consistency anchor (released: weight 10)
    rank_weights=dict(type='TopKSoftmaxWeights', top_k=2, tau=1.0),
    decoder_anchor=dict(type='EMAAnchor', weight=10.0, distance='perceptual'),
    # the toy LPIPS runs on the reward classifier's activations: the FID network trains nothing
    perceptual_loss=dict(type='ToyPerceptualLoss', net={{_base_.toy_reward_classifier}}),
    discriminator={{_base_.toy_discriminator}},
    # the toy policy samples best without guidance (measured: model_zoo.md); real recipes use CFG
    rollout=dict(group_size=8, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                 decode_with='ema'),
    policy_cfg=dict(inner_epochs=1, ema_decay=0.999, ema_interval=10),
    decoder_cfg=dict(ema_decay=0.99, l1_weight=1.0, perceptual_weight=1.0, gan_weight=0.5,
                     disc_weight=0.5, disc_start=50, rank_gan_weight=1.0, reward_weight=0.01,
                     disc_sees_policy=False, clamp_policy_decodes=True, lasc_weight=0.0))
