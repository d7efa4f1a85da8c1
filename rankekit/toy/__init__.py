"""The built-in toy world: networks, pretraining models and the shipped checkpoints.

Kept light on purpose: the pretraining models are registered by :mod:`rankekit.toy.pretraining`
(a location of the MODELS registry), imported only when a config needs them.
"""
