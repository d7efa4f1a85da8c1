# RankE on the toy world (shipped toy checkpoints): GRPO + KL policy anchor, EMA decoder anchor,
# G=8, both phases on every rollout (sync), as released.
_base_ = ['../_base_/models/ranke_toy.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/ranke_toy.py', '../_base_/default_runtime.py']
model = dict(
    tokenizer=dict(pretrained='toy://vq.pt'),
    policy=dict(pretrained='toy://policy.pt'),
    text_encoder=dict(pretrained='toy://text_encoder.pt'),
    perceptual_loss=dict(net=dict(pretrained='toy://reward_classifier.pt')))
