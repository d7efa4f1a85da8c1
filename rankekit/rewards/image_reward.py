"""ImageReward (Xu et al., 2023): a BLIP image-text encoder and an MLP head trained on human
preferences; a re-implementation that loads the official ``ImageReward.pt`` strictly.

The ``image-reward`` package pins ``timm==0.6.13`` and ``fairscale==0.4.13`` and downloads its
files from the Hub, so rankekit does not use it. The network is the one of its
``ImageReward/ImageReward.py`` and ``models/BLIP``:

- ``blip.visual_encoder``: BLIP's ViT-L/16 at 224 px (timm-style ``patch_embed.proj``,
  ``cls_token``, ``pos_embed``, 24 pre-norm ``blocks`` with a fused ``attn.qkv``, LayerNorm eps
  1e-6, exact GELU), returning every token after the final ``norm``;
- ``blip.text_encoder``: BLIP's BERT (``med_config.json``: 12 layers of 768, 12 heads, vocab
  30524 = bert-base-uncased + ``[DEC]`` + ``[ENC]``, absolute positions, no token types, LayerNorm
  eps 1e-12, no pooler) whose every layer has bidirectional self-attention, then
  cross-attention to the image tokens (``crossattention``, keys/values from width 1024), then
  the feed-forward;
- ``blip.vision_proj`` / ``blip.text_proj`` (to 256): in the checkpoint, unused for the score;
- ``mlp``: 768 -> 1024 -> 128 -> 64 -> 16 -> 1 linear layers (``layers.{0,2,4,6,7}``, the
  aesthetic predictor's layout).

score = (mlp(text_encoder(prompt tokens, cross-attending to the image)[CLS]) - 0.16717362830052426)
/ 1.0333394966054072. Prompts are WordPiece tokens of bert-base-uncased (lower-cased, accents
stripped), ``[CLS] ... [SEP]``, padded or truncated to 35; images are resized (shortest side
224, bicubic), centre-cropped and normalised with OpenAI's CLIP mean/std, with differentiable
torch ops (ImageReward's ReFL backpropagates through the score the same way).
"""
from __future__ import annotations

import re
import unicodedata
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import REWARDS
from rankekit.rewards.aesthetic import AestheticMLP
from rankekit.rewards.base import BaseReward
from rankekit.rewards.clip_score import clip_preprocess
from rankekit.rewards.hpsv2 import OPENAI_MEAN, OPENAI_STD
from rankekit.utils.weights import load_model_weights, require_weights

IMAGE_REWARD_SOURCE = ('ImageReward.pt from the Hugging Face model repo THUDM/ImageReward '
                       '(https://huggingface.co/THUDM/ImageReward), about 1.8 GB')
VOCAB_SOURCE = ('vocab.txt of the Hugging Face model repo google-bert/bert-base-uncased '
                '(https://huggingface.co/google-bert/bert-base-uncased), 30,522 lines')
DEFAULT_IMAGE_REWARD_PATH = 'data/weights/ImageReward.pt'
DEFAULT_VOCAB_PATH = 'data/weights/bert-base-uncased'
#: the mean and std of the raw head output over ImageReward's data (ImageReward.py)
SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
#: BLIP ViT-L ("large") at 224 px, as ImageReward builds it
VISION_CFG = dict(image_size=224, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4.0)
#: ImageReward's med_config.json (vocab_size comes from the tokenizer: 30522 + 2 added tokens)
TEXT_CFG = dict(width=768, layers=12, heads=12, intermediate=3072, max_positions=512)
#: a tiny vocabulary for tests and ``rankekit info`` (tokenizer=None): every word in letters
TINY_VOCAB = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *'abcdefghijklmnopqrstuvwxyz0123456789',
              *(f'##{c}' for c in 'abcdefghijklmnopqrstuvwxyz0123456789'), *',.!?-\'"()')


# --- tokenizer ------------------------------------------------------------------------------
def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
            or unicodedata.category(char).startswith('P'))


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPieceTokenizer:
    """BERT uncased tokenization (as ``transformers.BertTokenizer`` with bert-base-uncased):
    clean the text, split CJK characters, NFC, lower-case and strip accents, split punctuation,
    then greedy longest-match WordPiece (``##`` continuations, ``[UNK]`` for a word it cannot
    cover or longer than 100 characters). Special tokens written in a prompt stay whole.

    ``added`` tokens get the ids after the vocabulary (ImageReward adds ``[DEC]`` and ``[ENC]``).
    """

    def __init__(self, vocab: Sequence[str], added: Sequence[str] = ('[DEC]', '[ENC]')):
        self.vocab = {token: i for i, token in enumerate([*vocab, *added])}
        missing = [t for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]') if t not in self.vocab]
        if missing:
            raise ValueError(f'the BERT vocabulary lacks the special tokens {missing}')
        self.special = [t for t in self.vocab if re.fullmatch(r'\[[A-Z]+\]', t)]
        self._special_re = re.compile('(' + '|'.join(map(re.escape, self.special)) + ')')

    @classmethod
    def from_file(cls, path: str, what: str = 'BERT vocabulary') -> 'WordPieceTokenizer':
        """``vocab.txt`` (one token per line), or a folder holding it."""
        path = Path(path).expanduser()
        file = path / 'vocab.txt' if path.is_dir() or path.suffix != '.txt' else path
        require_weights(file, what=what, source=VOCAB_SOURCE, where=DEFAULT_VOCAB_PATH,
                        key='tokenizer')
        return cls(file.read_text(encoding='utf-8').splitlines())

    def __len__(self) -> int:
        return len(self.vocab)

    def _words(self, text: str) -> list[str]:
        chars = []
        for char in text:
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or (char not in '\t\n\r'
                                           and unicodedata.category(char).startswith('C')):
                continue
            if char in ' \t\n\r' or unicodedata.category(char) == 'Zs':
                chars.append(' ')
            else:
                chars.append(f' {char} ' if _is_cjk(cp) else char)
        words = []
        for word in unicodedata.normalize('NFC', ''.join(chars)).split():
            word = ''.join(c for c in unicodedata.normalize('NFD', word.lower())
                           if unicodedata.category(c) != 'Mn')
            words += re.sub(r'(.)', lambda m: f' {m[1]} ' if _is_punctuation(m[1]) else m[1],
                            word).split()
        return words

    def _pieces(self, word: str) -> list[str]:
        if len(word) > 100:
            return ['[UNK]']
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (('##' if start else '') + word[start:end]) not in self.vocab:
                end -= 1
            if end == start:
                return ['[UNK]']
            pieces.append(('##' if start else '') + word[start:end])
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for part in self._special_re.split(text):
            if part in self.special:
                tokens.append(part)
            else:
                tokens += [p for w in self._words(part) for p in self._pieces(w)]
        return tokens

    def __call__(self, prompts: Sequence[str], max_length: int = 35
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] tokens [SEP]`` padded/truncated to ``max_length``: (ids, attention mask)."""
        ids = torch.full((len(prompts), max_length), self.vocab['[PAD]'], dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            row = [self.vocab['[CLS]'], *(self.vocab[t] for t in self.tokenize(prompt)
                                          )][:max_length - 1] + [self.vocab['[SEP]']]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return ids, mask


# --- BLIP's ViT ---------------------------------------------------------------------------
def _attend(q, k, v, heads: int, mask=None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on (B, L, D) projections."""
    b, lq, d = q.shape
    q, k, v = (t.view(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, d)


class _Named(nn.Module):
    """A container whose children are given by keyword (to match the official key names)."""

    def __init__(self, /, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _Named(qkv=nn.Linear(width, 3 * width), proj=nn.Linear(width, width))
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Named(fc1=nn.Linear(width, hidden), fc2=nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.attn.proj(_attend(q, k, v, self.heads))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class BlipViT(nn.Module):
    """BLIP's image encoder: patch embedding, class token, learned positions, pre-norm blocks,
    final LayerNorm; returns every token (N, 1 + patches, width)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 1024,
                 layers: int = 24, heads: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        self.image_size, self.width = image_size, width
        self.patch_embed = _Named(proj=nn.Conv2d(3, width, patch_size, stride=patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self.pos_embed[:, :x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# --- BLIP's BERT with cross-attention --------------------------------------------------------
def _attention(width: int, kv_width: int) -> nn.Module:
    """BERT attention with its output: ``self.{query,key,value}``, ``output.{dense,LayerNorm}``."""
    return _Named(self=_Named(query=nn.Linear(width, width), key=nn.Linear(kv_width, width),
                              value=nn.Linear(kv_width, width)),
                  output=_Named(dense=nn.Linear(width, width),
                                LayerNorm=nn.LayerNorm(width, eps=1e-12)))


class BertLayer(nn.Module):
    """Self-attention, cross-attention to the image tokens, feed-forward (post-norm, residual)."""

    def __init__(self, width: int, heads: int, intermediate: int, encoder_width: int):
        super().__init__()
        self.heads = heads
        self.attention = _attention(width, width)
        self.crossattention = _attention(width, encoder_width)
        self.intermediate = _Named(dense=nn.Linear(width, intermediate))
        self.output = _Named(dense=nn.Linear(intermediate, width),
                             LayerNorm=nn.LayerNorm(width, eps=1e-12))

    def _attend(self, block: nn.Module, x, context, mask=None) -> torch.Tensor:
        attn = block.self
        out = _attend(attn.query(x), attn.key(context), attn.value(context), self.heads, mask)
        return block.output.LayerNorm(block.output.dense(out) + x)

    def forward(self, x, mask, image_embeds) -> torch.Tensor:
        x = self._attend(self.attention, x, x, mask)
        x = self._attend(self.crossattention, x, image_embeds)  # every image token is valid
        return self.output.LayerNorm(self.output.dense(F.gelu(self.intermediate.dense(x))) + x)


class BlipTextEncoder(nn.Module):
    """BLIP's BERT in its multimodal mode: text tokens attend to each other (bidirectional,
    padding masked) and to the image tokens; returns every token's hidden state."""

    def __init__(self, vocab_size: int, width: int = 768, layers: int = 12, heads: int = 12,
                 intermediate: int = 3072, max_positions: int = 512, encoder_width: int = 1024):
        super().__init__()
        self.embeddings = _Named(word_embeddings=nn.Embedding(vocab_size, width),
                                 position_embeddings=nn.Embedding(max_positions, width),
                                 LayerNorm=nn.LayerNorm(width, eps=1e-12))
        # a persistent buffer in BLIP's code, hence a key of the checkpoint
        self.embeddings.register_buffer('position_ids', torch.arange(max_positions)[None])
        self.encoder = _Named(layer=nn.ModuleList(
            BertLayer(width, heads, intermediate, encoder_width) for _ in range(layers)))

    def forward(self, ids, attention_mask, image_embeds) -> torch.Tensor:
        emb = self.embeddings
        x = emb.word_embeddings(ids) + emb.position_embeddings(emb.position_ids[:, :ids.shape[1]])
        x = emb.LayerNorm(x)
        # BERT's additive mask: 0 for tokens, -10000 for padding
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask, image_embeds)
        return x


class Blip(nn.Module):
    """What ImageReward keeps of BLIP's pretraining model (its ``blip.*`` keys)."""

    def __init__(self, vocab_size: int, vision_cfg: dict, text_cfg: dict, embed_dim: int = 256):
        super().__init__()
        self.visual_encoder = BlipViT(**vision_cfg)
        self.text_encoder = BlipTextEncoder(vocab_size, encoder_width=self.visual_encoder.width,
                                            **text_cfg)
        self.vision_proj = nn.Linear(self.visual_encoder.width, embed_dim)
        self.text_proj = nn.Linear(text_cfg['width'], embed_dim)


def _merged(defaults: dict, given: dict | None, key: str) -> dict:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f'ImageReward {key} has unknown keys {sorted(unknown)}; allowed: '
                         f'{sorted(defaults)}')
    return {**defaults, **(given or {})}


@REWARDS.register_module()
class ImageReward(BaseReward):
    """ImageReward v1.0: a BLIP ViT-L/BERT cross-encoder + MLP head, normalised human preference.

    About -2..2 (0: ImageReward's data average). Differentiable in the images by default.

    Args:
        pretrained: LOCAL ``ImageReward.pt`` (from THUDM/ImageReward), loaded strictly; None
            builds random weights (tests only, warns).
        tokenizer: bert-base-uncased's ``vocab.txt``, or a folder holding it; None uses a tiny
            built-in vocabulary of letters (tests only).
        vision_cfg / text_cfg: overrides of :data:`VISION_CFG` / :data:`TEXT_CFG` (tiny
            architectures in tests; the key names stay the official ones).
        max_length: prompt length in tokens, ``[CLS]`` and ``[SEP]`` included (35 as released).
        differentiable: let gradients flow to the images.
        name: name in logs, default ``image_reward``.
    """

    differentiable = True
    info_example = dict(type='ImageReward', pretrained=None, tokenizer=None,
                        vision_cfg=dict(image_size=32, patch_size=16, width=32, layers=1, heads=2),
                        text_cfg=dict(width=32, layers=1, heads=2, intermediate=64,
                                      max_positions=40))

    def __init__(self, pretrained: str | None = DEFAULT_IMAGE_REWARD_PATH,
                 tokenizer: str | None = DEFAULT_VOCAB_PATH, vision_cfg: dict | None = None,
                 text_cfg: dict | None = None, max_length: int = 35,
                 differentiable: bool = True, name: str | None = None):
        super().__init__(name=name or 'image_reward', differentiable=differentiable)
        what = 'ImageReward checkpoint'
        unset = [k for k, v in (('pretrained', pretrained), ('tokenizer', tokenizer)) if v is None]
        if unset:
            warnings.warn(f'ImageReward({", ".join(f"{k}=None" for k in unset)}): RANDOM weights '
                          'or a toy vocabulary, its scores mean nothing (tests only); see '
                          'docs/prepare_assets.md')
        if pretrained is not None:  # fail before building the 470M-parameter model
            require_weights(pretrained, what=what, source=IMAGE_REWARD_SOURCE,
                            where=DEFAULT_IMAGE_REWARD_PATH)
        self.tokenizer = (WordPieceTokenizer(TINY_VOCAB) if tokenizer is None
                          else WordPieceTokenizer.from_file(tokenizer))
        vision_cfg = _merged(VISION_CFG, vision_cfg, 'vision_cfg')
        text_cfg = _merged(TEXT_CFG, text_cfg, 'text_cfg')
        if max_length > text_cfg['max_positions']:
            raise ValueError(f'ImageReward max_length={max_length} exceeds the text encoder\'s '
                             f"{text_cfg['max_positions']} positions")
        self.max_length, self.image_size = max_length, vision_cfg['image_size']
        self.blip = Blip(len(self.tokenizer), vision_cfg, text_cfg)
        self.mlp = AestheticMLP(text_cfg['width'])
        self.pretrained = pretrained
        if pretrained is not None:
            load_model_weights(self, pretrained, strict=True, what=what,
                               source=IMAGE_REWARD_SOURCE, where=DEFAULT_IMAGE_REWARD_PATH)
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> resize (shortest side), centre crop, CLIP normalisation."""
        return clip_preprocess(images, self.image_size, OPENAI_MEAN, OPENAI_STD, 'bicubic',
                               'shortest')

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        param = self.mlp.layers[0].weight
        image_embeds = self.blip.visual_encoder(self.preprocess(images.to(param.device,
                                                                          param.dtype)))
        ids, mask = self.tokenizer(prompts, self.max_length)
        text = self.blip.text_encoder(ids.to(param.device), mask.to(param.device), image_embeds)
        raw = self.mlp(text[:, 0].float())
        return ((raw - SCORE_MEAN) / SCORE_STD).to(images.device)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, pretrained={self.pretrained!r}'
