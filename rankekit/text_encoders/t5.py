"""flan-t5-xl caption embeddings as LlamaGen's t2i GPTs expect them (transformers, local files).

transformers is imported inside the constructor only, so importing this module stays cheap.
Nothing here downloads: the model and tokenizer come from a local folder (or, for tests, a tiny
random T5 and an in-memory word-level tokenizer).

LlamaGen's convention, reproduced here: the prompt is lower-cased (and optionally cleaned), T5
encodes it right-padded with its attention mask, then each row is rotated so that its valid
tokens (including the closing ``</s>``) sit in the LAST slots of the ``max_length = 120``
slots; padded slots get mask 0 and embedding exactly 0.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rankekit.registry import TEXT_ENCODERS

T5_SOURCE = ('google/flan-t5-xl on Hugging Face (https://huggingface.co/google/flan-t5-xl): '
             'config.json, the weights (model.safetensors.index.json + model-0000?-of-00002'
             '.safetensors, or pytorch_model.bin.index.json + pytorch_model-0000?-of-00002.bin) '
             'and the tokenizer (tokenizer.json or spiece.model, tokenizer_config.json, '
             'special_tokens_map.json)')
DEFAULT_T5_DIR = 'data/weights/flan-t5-xl'
_WEIGHT_FILES = ('model.safetensors.index.json', 'model.safetensors',
                 'pytorch_model.bin.index.json', 'pytorch_model.bin')
_DTYPES = {'bf16': torch.bfloat16, 'fp32': torch.float32, 'fp16': torch.float16}

# --- caption cleaning (our own small normalisation; see T5TextEncoder.clean) ------------------
_TAG = re.compile(r'<[^>\s][^>]*>')
_URL = re.compile(r'\b(?:https?://|www\.)\S+', re.IGNORECASE)
_HANDLE = re.compile(r'(?<!\w)@\w+')
_DASHES = re.compile('[\u2010-\u2015\u2212\uFE58\uFE63\uFF0D]')
_DQUOTES = re.compile('[\u201C\u201D\u201E\u00AB\u00BB]')
_SQUOTES = re.compile('[\u2018\u2019\u201A`\u00B4]')
_SPACE = re.compile(r'\s+')


def clean_caption(text: str) -> str:
    """Light caption cleanup: HTML entities and tags, URLs, @handles, fancy quotes/dashes, spaces.

    Steps, in order: unescape HTML entities (twice, for double-escaped text); replace HTML tags
    by a space; drop URLs (``http(s)://...``, ``www....``) and ``@handles``; map typographic
    dashes to ``-`` and typographic quotes to ``"`` / ``'``; turn literal ``\\n`` sequences and
    all whitespace runs into one space; strip. Lower-casing is done by the caller.
    """
    text = html.unescape(html.unescape(text))
    text = _TAG.sub(' ', text)
    text = _URL.sub(' ', text)
    text = _HANDLE.sub(' ', text)
    text = _DASHES.sub('-', text)
    text = _DQUOTES.sub('"', text)
    text = _SQUOTES.sub("'", text)
    text = text.replace('\\n', ' ')
    return _SPACE.sub(' ', text).strip()


def build_word_tokenizer(words: Sequence[str], model_max_length: int = 120):
    """A T5-like word-level tokenizer built in memory (tests, ``random_cfg`` mode).

    ``<pad>`` = 0, ``</s>`` = 1 (appended to every text, as T5's tokenizer does), ``<unk>`` = 2,
    then ``words`` in order; text is split on whitespace and punctuation. Returns a
    ``transformers.PreTrainedTokenizerFast`` (``save_pretrained`` writes a folder that
    ``AutoTokenizer`` reads offline). The real flan-t5-xl tokenizer is a SentencePiece model.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {'<pad>': 0, '</s>': 1, '<unk>': 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single='$A </s>',
                                                        special_tokens=[('</s>', 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token='<pad>', eos_token='</s>',
                                   unk_token='<unk>', model_max_length=model_max_length)


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError('T5TextEncoder needs the transformers package: pip install '
                          '"rankekit[t5]" (transformers, sentencepiece)') from exc
    return transformers


def _check_model_dir(model_dir: Path) -> None:
    """Raise a clear error unless ``model_dir`` holds a loadable T5 folder."""
    hint = (f'T5TextEncoder model_dir={str(model_dir)!r}: expected a local copy of {T5_SOURCE}. '
            f'Download it once (e.g. huggingface-cli download google/flan-t5-xl --local-dir '
            f'{DEFAULT_T5_DIR}) and set model_dir (see docs/prepare_assets.md).')
    if not model_dir.is_dir():
        raise FileNotFoundError(f'T5 model folder not found. {hint}')
    present = {p.name for p in model_dir.iterdir()}
    problems = []
    if 'config.json' not in present:
        problems.append('config.json is missing')
    if not present.intersection(_WEIGHT_FILES):
        problems.append(f'no weights ({" / ".join(_WEIGHT_FILES)})')
    for index in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
        if index in present:
            try:
                shards = set(json.loads((model_dir / index).read_text())['weight_map'].values())
            except (ValueError, KeyError, TypeError):
                problems.append(f'{index} is not a valid shard index')
                continue
            missing = sorted(shards - present)
            if missing:
                problems.append(f'{index} lists shard(s) {missing} that are not there')
            break  # transformers reads the first layout present, as listed in _WEIGHT_FILES
    if not present.intersection({'tokenizer.json', 'spiece.model'}):
        problems.append('no tokenizer (tokenizer.json or spiece.model)')
    elif 'tokenizer.json' not in present:
        # without tokenizer.json, transformers reads spiece.model with sentencepiece
        if importlib.util.find_spec('sentencepiece') is None:
            problems.append('only spiece.model is there and the sentencepiece package is not '
                            'installed (pip install sentencepiece, or add tokenizer.json)')
    if problems:
        raise FileNotFoundError(f'T5 model folder {model_dir} is incomplete: '
                                f'{"; ".join(problems)}. {hint}')


@TEXT_ENCODERS.register_module()
class T5TextEncoder(nn.Module):
    """flan-t5-xl encoder from a local folder -> LlamaGen's left-padded (B, 120, 2048) embeddings.

    ``forward(prompts) -> (emb FloatTensor (B, max_length, D), mask LongTensor (B, max_length))``
    with LlamaGen's conventions: prompts are lower-cased and stripped (and cleaned by
    :func:`clean_caption` when ``clean_caption=True``), tokenized with ``</s>`` appended and
    truncated to ``max_length`` tokens, encoded by the T5 encoder with an attention mask, then
    LEFT-padded: each row's valid tokens fill its last slots, padded slots have mask 0 and an
    all-zero embedding. ``emb`` is float32 whatever the compute ``dtype``.

    The encoder is frozen: no parameter requires grad, it stays in eval mode (T5's dropout
    off) even when a parent module calls ``.train()``, and ``forward`` runs without autograd.

    Args:
        model_dir: local folder with google/flan-t5-xl (``config.json``, weights, tokenizer),
            read with ``local_files_only=True``; nothing is downloaded.
        max_length: token slots T (LlamaGen: 120 = the GPT's ``cls_token_num``).
        clean_caption: apply :func:`clean_caption` before tokenizing.
        dtype: compute dtype of the encoder, ``'bf16'`` (LlamaGen's default) or ``'fp32'``
            (``'fp16'`` is accepted but T5 is known to overflow in fp16).
        random_cfg: tests only: with ``model_dir=None``, a dict of ``transformers.T5Config``
            fields (e.g. ``dict(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32)``)
            builds a randomly initialised T5 encoder with an in-memory word-level tokenizer
            over ``random_vocab`` (default: the toy caption words).
        random_vocab: words of that tokenizer.
    """

    info_example = dict(type='T5TextEncoder', model_dir=None, max_length=16, dtype='fp32',
                        random_cfg=dict(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32))

    def __init__(self, model_dir: str | os.PathLike | None = DEFAULT_T5_DIR,
                 max_length: int = 120, clean_caption: bool = True, dtype: str = 'bf16',
                 random_cfg: dict | None = None, random_vocab: Sequence[str] | None = None):
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"T5TextEncoder dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f'T5TextEncoder max_length must be an int >= 2 (room for one token '
                             f'and </s>), got {max_length!r}')
        if (model_dir is None) == (random_cfg is None):
            raise ValueError('T5TextEncoder needs exactly one of model_dir (a local flan-t5-xl '
                             'folder) and random_cfg (a tiny random T5, tests only); got '
                             f'model_dir={model_dir!r}, random_cfg={random_cfg!r}')
        self._max_length, self.clean, self.dtype_name = max_length, bool(clean_caption), dtype
        torch_dtype = _DTYPES[dtype]
        if model_dir is not None:
            model_dir = Path(model_dir).expanduser()
            _check_model_dir(model_dir)  # before importing anything heavy: fail fast and clearly
            transformers = _import_transformers()
            self.model_dir = str(model_dir)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                model_dir, local_files_only=True)
            self.encoder = transformers.T5EncoderModel.from_pretrained(
                model_dir, local_files_only=True, **self._dtype_kwarg(transformers, torch_dtype))
        else:
            transformers = _import_transformers()
            from rankekit.datasets.toy_shapes import VOCAB
            self.model_dir = None
            config = transformers.T5Config(**{'vocab_size': 0, **dict(random_cfg)})
            self.tokenizer = build_word_tokenizer(random_vocab or VOCAB, max_length)
            config.vocab_size = max(config.vocab_size, len(self.tokenizer))
            self.encoder = transformers.T5EncoderModel(config).to(torch_dtype)
        self.tokenizer.padding_side = 'right'  # T5 runs right-padded; rows are rotated after
        self.encoder.requires_grad_(False)
        super().train(False)

    @staticmethod
    def _dtype_kwarg(transformers, torch_dtype) -> dict:
        # transformers >= 4.56 renamed from_pretrained's torch_dtype to dtype
        major, minor = (int(x) for x in transformers.__version__.split('.')[:2])
        return {'dtype' if (major, minor) >= (4, 56) else 'torch_dtype': torch_dtype}

    def train(self, mode: bool = True) -> 'T5TextEncoder':
        return super().train(False)  # frozen: T5's dropout must stay off

    @property
    def embed_dim(self) -> int:
        """Output dimension D (2048 for flan-t5-xl = LlamaGen's ``caption_dim``)."""
        return self.encoder.config.d_model

    @property
    def max_length(self) -> int:
        """Token slots T (prompts are truncated to it; rows are left-padded to it)."""
        return self._max_length

    def preprocess(self, prompt: str) -> str:
        """The text that is tokenized: cleaned (optional), lower-cased, stripped."""
        text = clean_caption(prompt) if self.clean else prompt
        return text.lower().strip()

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(input_ids (B, L), attention_mask (B, L))``, L <= max_length."""
        if isinstance(prompts, str):
            raise TypeError('T5TextEncoder expects a list of prompts, got one string; wrap it in '
                            'a list')
        prompts = list(prompts)
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f'T5TextEncoder prompt {row} is {type(prompt).__name__}, not str')
        batch = self.tokenizer([self.preprocess(p) for p in prompts], max_length=self.max_length,
                               padding='longest', truncation=True, add_special_tokens=True,
                               return_attention_mask=True, return_tensors='pt')
        return batch['input_ids'], batch['attention_mask']

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts: ``(emb FloatTensor (B, T, D), mask LongTensor (B, T))``, left-padded."""
        ids, attn = self.tokenize(prompts)
        device = self.encoder.get_input_embeddings().weight.device
        hidden = self.encoder(input_ids=ids.to(device),
                              attention_mask=attn.to(device)).last_hidden_state.float()
        batch, length = ids.shape
        emb = hidden.new_zeros(batch, self.max_length, hidden.shape[-1])
        mask = torch.zeros(batch, self.max_length, dtype=torch.long, device=device)
        for row, valid in enumerate(attn.sum(1).tolist()):
            if valid:  # right padding: the valid tokens are the first `valid` positions
                emb[row, -valid:] = hidden[row, :valid]
                mask[row, -valid:] = 1
        return emb, mask

    def extra_repr(self) -> str:
        return (f'model_dir={self.model_dir!r}, max_length={self.max_length}, '
                f'dtype={self.dtype_name!r}, clean_caption={self.clean}')
