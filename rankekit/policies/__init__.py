"""Autoregressive policies over codebook indices, with their samplers."""
from .llamagen_gpt import LlamaGenGPT
from .sampling import SampleOutput

__all__ = ['LlamaGenGPT', 'SampleOutput']
