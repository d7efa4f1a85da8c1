"""Models: the RankE co-evolution model and the discriminators."""
from .discriminators import PatchGANDiscriminator
from .rank_e import NonFiniteError, RankEModel

__all__ = ['RankEModel', 'PatchGANDiscriminator', 'NonFiniteError']
