# No decoder anchor: only the GT reconstruction term keeps the decoder in place.
_base_ = ['../ranke/ranke_toy.py']
model = dict(decoder_anchor=None)
