# Convergence check of the toy tokenizer (model_zoo.md, "Toy backbone"): 300 iterations of exactly
# RankE's decoder-phase reconstruction objective (L1 + perceptual + adaptive hinge GAN on real
# images, fresh discriminator), no policy-token terms, the policy frozen. A converged decoder's
# rFID and the base policy's FID barely move. Run by tools/prepare_toy_assets.py
# --convergence-check.
_base_ = ['../ablation/decoder_recon_only.py']
default_hooks = dict(coevolution=dict(train_mode='decoder'), checkpoint=dict(interval=300))
train_cfg = dict(max_iters=300, val_begin=1000000)  # measured by the tool, not in training
custom_hooks = [dict(type='RichProgressHook', keys=['decoder/l1', 'decoder/perceptual'])]
