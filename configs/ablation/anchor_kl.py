# Decoder anchor: Gaussian KL to the initial decoder's decodes (= MSE / 2 sigma^2).
_base_ = ['../ranke/ranke_toy.py']
model = dict(decoder_anchor=dict(_delete_=True, type='KLAnchor', weight=10.0,
                                 reference='initial', sigma=1.0))
