# Decoder rank weights: uniform (every rollout weight 1): no ranking in the decoder phase.
_base_ = ['../ranke/ranke_toy.py']
model = dict(rank_weights=dict(_delete_=True, type='UniformRankWeights'))
