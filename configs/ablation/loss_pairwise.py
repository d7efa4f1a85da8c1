# Policy rank loss: Bradley-Terry / DPO-style over within-group pairs ordered by reward.
_base_ = ['../ranke/ranke_toy.py']
model = dict(rank_loss=dict(_delete_=True, type='PairwiseRankLoss', beta=0.1, margin=0.0))
