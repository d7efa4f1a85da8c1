"""Autoregressive policies over codebook indices, with their samplers."""
from .janus import JanusProPolicy
from .llamagen_gpt import LlamaGenGPT
from .sampling import SampleOutput

__all__ = ['LlamaGenGPT', 'JanusProPolicy', 'SampleOutput']
