# RankE on the toy world (shipped toy checkpoints): GRPO + KL policy anchor, EMA decoder anchor,
# G=8, both phases on every rollout (sync), as released.
_base_ = ['../_base_/models/ranke_toy.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/ranke_toy.py', '../_base_/toy_evaluation.py',
          '../_base_/ranke_runtime.py']
model = dict(
    tokenizer=dict(pretrained='toy://vq.pt'),
    policy=dict(pretrained='toy://policy.pt'),
    text_encoder=dict(pretrained='toy://text_encoder.pt'),
    perceptual_loss=dict(net=dict(pretrained='toy://reward_classifier.pt')),
    # the tokenizer GAN stage's discriminator: the decoder phase continues its adversarial game
    # (a random critic made the converged decoder worse: model_zoo.md, convergence check)
    discriminator=dict(pretrained='toy://vq_disc.pt'))
default_hooks = dict(checkpoint=dict(interval=100))
custom_hooks = [
    dict(type='RichProgressHook',
         keys=['reward/mean', 'policy/kl', 'decoder/l1', 'decoder/anchor']),
    # latent covariate shift (LCS-KL, token entropy) and an image grid of fixed prompts
    dict(type='CovariateShiftMonitorHook', interval=50, num_prompts=64, num_real=128,
         real=dict(type='ToyShapes', split='test', num_samples=128)),
    dict(type='ImageGridHook', interval=100, num_prompts=8, combos=['online:ema', 'online:base'])]
# evaluate at the end of training (the table the main job prints)
train_cfg = dict(val_interval=300)
