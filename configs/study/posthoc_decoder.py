# Falsification test of co-evolution (the referee's question): the policy of a FINISHED
# standard-RL run (configs/ranke/grpo_toy.py), frozen; the decoder trained with RankE's full
# decoder objective (rank-weighted GAN and reward terms, EMA anchor, reconstruction) on that
# policy's tokens, one decoder step per iteration as in RankE. If this matches RankE's FID, the
# policy and the decoder co-evolving is not what helps.
# The standard-RL checkpoint is the run's own seed: for seed S pass
#   --seed S --cfg-options load_from=work_dirs/study/grpo_toy/seedS/iter_600.pth
_base_ = ['../ablation/anchor_ema.py']
default_hooks = dict(coevolution=dict(train_mode='decoder'))
train_cfg = dict(max_iters=600)
load_from = 'work_dirs/study/grpo_toy/seed0/iter_600.pth'
