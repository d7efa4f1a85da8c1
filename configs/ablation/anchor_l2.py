# Decoder anchor: squared distance of the decoder's parameters to their initial values.
_base_ = ['../ranke/ranke_toy.py']
model = dict(decoder_anchor=dict(_delete_=True, type='L2Anchor', weight=1000.0,
                                 reference='initial'))
