# The falsification test (posthoc_decoder.py) in the drift-prone regime: the decoder trained
# post hoc on the tokens of a finished grpo_toy_drift run. For seed S pass
#   --seed S --cfg-options load_from=work_dirs/study/grpo_toy_drift/seedS/iter_600.pth
_base_ = ['./anchor_ema_drift.py']
default_hooks = dict(coevolution=dict(train_mode='decoder'))
train_cfg = dict(max_iters=600)
load_from = 'work_dirs/study/grpo_toy_drift/seed0/iter_600.pth'
