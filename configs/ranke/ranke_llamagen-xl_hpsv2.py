# RankE on LlamaGen-XL with the HPS v2.1 reward, as released. Paper (HPSv2 benchmark average):
# Std. RL 0.2451, RankE 0.2531. Other asset paths: see ranke_llamagen-xl_clip.py.
_base_ = ['./ranke_llamagen-xl_clip.py']

weights_root = 'data/weights'

# The released run scores with HPS without gradients, so the decoder's reward-backprop term
# (reward_weight 0.01) has no effect; rankekit says so once (warning + the log key
# decoder/reward_term_dropped) instead of silently. differentiable=True would turn it on (not
# what was released). scale=1: HPS's raw cosine (~0.25); GRPO normalises it per group anyway.
model = dict(rewards=[dict(type='HPSv2', pretrained=f'{weights_root}/HPS_v2.1_compressed.pt',
                           scale=1.0, differentiable=False, name='hpsv2')])
