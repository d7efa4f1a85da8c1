"""A small learned text encoder over the toy caption vocabulary (the toy world's T5)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rankekit.datasets.toy_shapes import VOCAB, tokenize_words
from rankekit.registry import TEXT_ENCODERS

PAD, UNK = '<pad>', '<unk>'


@TEXT_ENCODERS.register_module()
class ToyTextEncoder(nn.Module):
    """Word embeddings + a small transformer encoder over toy captions -> (B, T, D), mask.

    Captions are lower-cased and split on non-letters; words outside the vocabulary map to
    ``<unk>``; a caption longer than ``max_length`` words keeps its first ``max_length`` words.
    Padding is on the LEFT as in LlamaGen: valid tokens sit at the end of the ``T = max_length``
    slots, padded slots have mask 0 and embeddings exactly 0. Positions count words from the
    first one, so a caption's embeddings do not depend on how much padding it got. An empty
    caption gives an all-zero row and mask.

    It is pretrained on captions alone (``TextEncoderPretrainModel``: its mean-pooled output must
    tell the scene) and then frozen, in the policy's pretraining and in RL, as LlamaGen's T5.

    Args:
        embed_dim: output dimension (= the policy's ``caption_dim``).
        max_length: token slots T.
        width: hidden width of the encoder.
        num_layers, num_heads: transformer encoder size.
        dropout: dropout inside the encoder layers.
        vocab: words (default: the toy caption vocabulary); ``<pad>`` = 0, ``<unk>`` = 1 are added.
        pretrained: optional state_dict file to load (strictly).
    """

    info_example = dict(type='ToyTextEncoder', embed_dim=32, width=32, num_layers=1,
                        num_heads=2)

    def __init__(self, embed_dim: int = 64, max_length: int = 16, width: int = 64,
                 num_layers: int = 2, num_heads: int = 4, dropout: float = 0.0,
                 vocab: Sequence[str] | None = None, pretrained: str | None = None):
        super().__init__()
        if width % num_heads:
            raise ValueError(f'ToyTextEncoder width ({width}) must be divisible by num_heads '
                             f'({num_heads})')
        if max_length < 1 or embed_dim < 1:
            raise ValueError(f'ToyTextEncoder needs max_length >= 1 and embed_dim >= 1, got '
                             f'{max_length}, {embed_dim}')
        words = list(VOCAB if vocab is None else vocab)
        if len(set(words)) != len(words) or PAD in words or UNK in words:
            raise ValueError('ToyTextEncoder vocab must hold distinct words without <pad>/<unk>')
        self.vocab = [PAD, UNK] + words
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self._embed_dim, self._max_length = embed_dim, max_length
        self.token_embedding = nn.Embedding(len(self.vocab), width, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
        layer = nn.TransformerEncoderLayer(width, num_heads, dim_feedforward=4 * width,
                                           dropout=dropout, batch_first=True, norm_first=True)
        # nested tensors would change numerics with the padding pattern; keep the plain path
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()
        if pretrained is not None:
            from rankekit.utils.weights import load_model_weights
            load_model_weights(self, pretrained, strict=True, what='toy text encoder weights')

    @property
    def embed_dim(self) -> int:
        """Output dimension D."""
        return self._embed_dim

    @property
    def max_length(self) -> int:
        """Token slots T (captions are padded on the left / truncated to it)."""
        return self._max_length

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids LongTensor (B, T), mask LongTensor (B, T))``, left-padded, first words kept."""
        if isinstance(prompts, str):
            raise TypeError('ToyTextEncoder expects a list of prompts, got one string; wrap it '
                            'in a list')
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        unk = self.word_to_id[UNK]
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f'ToyTextEncoder prompt {row} is {type(prompt).__name__}, not str')
            words = tokenize_words(prompt)[:self.max_length]
            if words:
                ids[row, -len(words):] = torch.tensor([self.word_to_id.get(w, unk) for w in words])
                mask[row, -len(words):] = 1
        return ids, mask

    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts: ``(emb FloatTensor (B, T, D), mask LongTensor (B, T))``."""
        device = self.position_embedding.device
        ids, mask = (t.to(device) for t in self.tokenize(prompts))
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # word index, independent of padding
        x = self.token_embedding(ids) + self.position_embedding[positions]
        # an all-padding row would make attention softmax over nothing (NaN): let it see its
        # last slot; its output is zeroed by the mask below anyway
        key_padding = mask == 0
        key_padding[:, -1] &= mask.any(1)
        x = self.encoder(x, src_key_padding_mask=key_padding)
        emb = self.proj(self.norm(x)) * mask.unsqueeze(-1).to(x.dtype)
        return emb, mask
