"""rankekit.text_encoders: prompt encoders registered in ``TEXT_ENCODERS``."""
from .janus_prompt import JanusPromptEncoder
from .t5 import T5TextEncoder
from .toy_text_encoder import ToyTextEncoder

__all__ = ['T5TextEncoder', 'ToyTextEncoder', 'JanusPromptEncoder']
