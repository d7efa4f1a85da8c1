# RankE on LlamaGen-XL with the HPS v2.1 reward, as released. Paper (HPSv2 benchmark average):
# Std. RL 0.2451, RankE 0.2531. Other asset paths: see ranke_llamagen-xl_clip.py.
_base_ = ['./ranke_llamagen-xl_clip.py']

weights_root = 'data/weights'

# The released run scores with HPS without gradients, so its decoder reward-backprop term
# (reward_weight 0.01 in the release) gets no gradient either: reward_weight=0.0 here says so
# (rankekit refuses a reward weight > 0 without a differentiable reward). differentiable=True with
# reward_weight=0.01 would turn the term on (not what was released). scale=1: HPS's raw cosine
# (~0.25); GRPO normalises it per group anyway.
model = dict(rewards=[dict(type='HPSv2', pretrained=f'{weights_root}/HPS_v2.1_compressed.pt',
                           scale=1.0, differentiable=False, name='hpsv2')],
             decoder_cfg=dict(reward_weight=0.0))
