# The toy AR policy (LlamaGen's GPT class), trained by next-token cross-entropy on the toy
# tokenizer's codes; caption dropout 0.1 makes CFG work. The codes are stage 1's (vq_l1.pt): stage 2
# (vq.pt) trains only the decoder, so they are the same. The text encoder comes pretrained
# (text_encoder_toy.py) and stays frozen, as LlamaGen's T5 does: trained jointly from scratch it
# never learned colour (model_zoo.md, "Toy backbone").
_base_ = ['../_base_/models/pretrain_policy_toy.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/schedules/pretrain_toy.py', '../_base_/default_runtime.py']
model = dict(tokenizer=dict(pretrained='toy://vq_l1.pt'),
             text_encoder=dict(pretrained='toy://text_encoder.pt'), freeze_text_encoder=True)
train_dataloader = dict(batch_size=32)
train_cfg = dict(max_iters=10000)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=40),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=40, end=10000, eta_min_ratio=0.05)]
default_hooks = dict(checkpoint=dict(interval=2000))
custom_hooks = [dict(type='RichProgressHook', keys=['loss/ce', 'acc/token'])]
randomness = dict(seed=0)
