"""Janus-Pro's image tokenizer: its ``gen_vision_model`` is a LlamaGen VQ-16.

Janus builds ``gen_vision_model`` as LlamaGen's ``VQ_models['VQ-16']()`` (codebook 16384 x 8,
L2-normalised) with the same keys and maths, so :class:`~rankekit.tokenizers.VQModel` is reused;
only the weights come from the Janus directory, under the ``gen_vision_model.`` prefix.
One upstream difference is not reproduced: Janus's ``Upsample`` casts non-fp32 activations to
bf16 after interpolation (a no-op for a bf16 model, a precision loss for fp16).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import torch

from rankekit.registry import TOKENIZERS
from rankekit.utils.weights import WeightsFileError, _format_report, state_dict_report

from .vq_model import VQModel

GEN_VISION_PREFIX = 'gen_vision_model.'


def load_janus_gen_vision(path: str | os.PathLike) -> 'OrderedDict[str, torch.Tensor]':
    """The VQ state_dict inside a Janus directory or weights file: the ``gen_vision_model.*``
    keys with the prefix stripped (a file without such keys is taken as a plain VQ state_dict).
    """
    from rankekit.policies.janus import read_janus_weights  # the shared Janus file reader
    is_file = Path(path).expanduser().is_file()
    state = read_janus_weights(path, '' if is_file else '^' + re.escape(GEN_VISION_PREFIX),
                               what='Janus-Pro checkpoint (gen_vision_model)')
    prefixed = OrderedDict((k[len(GEN_VISION_PREFIX):], v) for k, v in state.items()
                           if k.startswith(GEN_VISION_PREFIX))
    if prefixed or (is_file and state):
        return prefixed or state
    raise WeightsFileError(
        f'{path} holds no gen_vision_model.* keys, so the Janus VQ tokenizer cannot be loaded '
        f'from it. The official deepseek-ai/Janus-Pro-1B directory holds them; reduced copies '
        f'(e.g. the reference janus_tiny, which stores the language model and gen heads only) '
        f'do not: build JanusVQ without pretrained= for such a directory.')


@TOKENIZERS.register_module()
class JanusVQ(VQModel):
    """Janus-Pro gen VQ (LlamaGen VQ-16, 16384 x 8 codes, 24x24 grid at 384 px) from a Janus dir.

    Args:
        pretrained: a Janus Hugging Face directory (``gen_vision_model.*`` keys are taken and
            stripped; everything else is ignored) or a weights file (with or without the
            prefix); loaded strictly.
        arch, image_size, **config: as :class:`VQModel`; defaults are Janus-Pro's ('VQ-16',
            384 px, codebook 16384 x 8).
    """

    info_example = dict(type='JanusVQ', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1],
                        decoder_ch_mult=[1, 1], z_channels=16, codebook_size=32,
                        codebook_embed_dim=4, image_size=16)

    def __init__(self, pretrained: str | None = None, arch: str | None = 'VQ-16',
                 image_size: int = 384, **config):
        super().__init__(arch=arch, pretrained=pretrained, image_size=image_size, **config)

    def load_pretrained(self, path: str) -> dict:
        """Load the ``gen_vision_model`` part of a Janus directory strictly; returns the report."""
        state = load_janus_gen_vision(path)
        report = state_dict_report(self, state)
        if report['missing'] or report['unexpected'] or report['mismatched']:
            raise WeightsFileError(f'the gen_vision_model weights in {path} do not fit JanusVQ '
                                   f'({self.arch or "custom"}): {_format_report(report)}')
        self.load_state_dict(state, strict=True)
        return report


__all__ = ['JanusVQ', 'load_janus_gen_vision', 'GEN_VISION_PREFIX']
