"""VQ tokenizers: images <-> grids of codebook indices (LlamaGen-compatible :class:`VQModel`)."""
from .janus_vq import JanusVQ, load_janus_gen_vision
from .patch_vq import PatchEncoder, PatchVQModel
from .vq_model import VQ_ARCHS, VQConfig, VQModel, VectorQuantizer

__all__ = ['VQModel', 'VQConfig', 'VectorQuantizer', 'VQ_ARCHS', 'JanusVQ', 'load_janus_gen_vision',
           'PatchVQModel', 'PatchEncoder']
