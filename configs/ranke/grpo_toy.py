# Standard RL ("Std. RL" of the paper): the same GRPO policy phase, the decoder frozen.
_base_ = ['./ranke_toy.py']
default_hooks = dict(coevolution=dict(train_mode='policy'))
