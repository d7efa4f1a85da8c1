# Policy rank loss: listwise cross-entropy to softmax(r / tau) over sequence log-ratios.
_base_ = ['../ranke/ranke_toy.py']
model = dict(rank_loss=dict(_delete_=True, type='ListwiseRankLoss', objective='softmax_ce',
                            tau=1.0, beta=1.0))
