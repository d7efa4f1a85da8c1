"""Models: the RankE co-evolution model, its data-parallel wrapper and the discriminators."""
from .discriminators import PatchGANDiscriminator
from .distributed import RankEDataParallel
from .rank_e import NonFiniteError, RankEModel

__all__ = ['RankEModel', 'PatchGANDiscriminator', 'NonFiniteError', 'RankEDataParallel']
