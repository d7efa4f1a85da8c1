"""rankekit.losses: ranking losses, rank weights and decoder-side losses."""
from rankekit.losses import perceptual  # noqa: F401
from .rank_losses import *  # noqa: F401,F403
from .rank_weights import *  # noqa: F401,F403
