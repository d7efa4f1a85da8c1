"""Stability anchors (KL, EMA, L2) for the policy or the decoder."""
from .anchors import BaseAnchor, EMAAnchor, KLAnchor, L2Anchor, kl_estimate

__all__ = ['BaseAnchor', 'KLAnchor', 'EMAAnchor', 'L2Anchor', 'kl_estimate']
