# RankE's default decoder anchor, explicit: perceptual consistency with the EMA decoder (w=10).
_base_ = ['../ranke/ranke_toy.py']
model = dict(decoder_anchor=dict(_delete_=True, type='EMAAnchor', weight=10.0,
                                 distance='perceptual'))
