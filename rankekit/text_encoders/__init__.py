"""rankekit.text_encoders: prompt encoders registered in ``TEXT_ENCODERS``."""
from .toy_text_encoder import ToyTextEncoder

__all__ = ['ToyTextEncoder']
