"""Autoregressive policies over codebook indices, with their samplers."""
from .janus import JanusProPolicy, JanusPromptEncoder
from .llamagen_gpt import LlamaGenGPT
from .sampling import SampleOutput

__all__ = ['LlamaGenGPT', 'JanusProPolicy', 'JanusPromptEncoder', 'SampleOutput']
