# Policy rank loss: GRPO (group-normalised advantages, PPO clip 0.2), explicit.
_base_ = ['../ranke/ranke_toy.py']
model = dict(rank_loss=dict(_delete_=True, type='GRPOLoss', clip_eps=0.2, scale='group',
                            std_eps=1e-4, adv_clamp=5.0, aggregation='token_mean'))
