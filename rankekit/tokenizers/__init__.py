"""VQ tokenizers: images <-> grids of codebook indices (LlamaGen-compatible :class:`VQModel`)."""
from .vq_model import VQ_ARCHS, VQConfig, VQModel, VectorQuantizer

__all__ = ['VQModel', 'VQConfig', 'VectorQuantizer', 'VQ_ARCHS']
