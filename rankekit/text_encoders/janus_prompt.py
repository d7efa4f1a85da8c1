"""The Janus-Pro prompt encoder: SFT template + tokenizer -> left-padded prompt ids and mask.

It has no weights (the embeddings belong to :class:`~rankekit.policies.JanusProPolicy`, which
takes the ids as its condition); the prompt convention is described in
:mod:`rankekit.policies.janus`.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rankekit.policies.janus import (ASSISTANT_ROLE, IMAGE_START_TAG, JANUS_SOURCE, PAD_TAG,
                                     TINY_SPECIAL_TOKEN_IDS, USER_ROLE, _require_transformers)
from rankekit.registry import TEXT_ENCODERS
from rankekit.utils.weights import _missing_file_message

@TEXT_ENCODERS.register_module()
class JanusPromptEncoder(nn.Module):
    """Janus-Pro prompt template + tokenizer -> left-padded prompt ids (B, T) and mask (B, T).

    Each prompt becomes
    ``[BOS] tokens("<|User|>: {prompt}\\n\\n<|Assistant|>:") [<begin_of_image>]`` (the official
    SFT format with an empty system prompt, then the image start tag), as
    :class:`JanusProPolicy` expects. It has no weights.

    A prompt may also be a sequence of ints: the token ids of the already formatted text,
    without BOS and ``<begin_of_image>``, which are added.

    Args:
        tokenizer_path: a local directory with the Janus tokenizer files (usually the model
            directory); read with ``transformers.AutoTokenizer`` offline. ``None`` uses a
            stand-in word-hash tokenizer (text ids ``crc32(word) % stand_in_vocab_size``) with
            the tiny reference ids, for tests and tiny random models only.
        max_length: pad every batch to this many tokens (a longer prompt raises); ``None`` pads
            to the longest prompt of the batch.
        system_prompt: text placed before the user turn (official default: empty).
        special_token_ids: dict with ``bos``, ``pad``, ``image_start`` overriding the
            tokenizer's.
        stand_in_vocab_size: text ids of the stand-in tokenizer.
    """

    info_example = dict(type='JanusPromptEncoder')

    def __init__(self, tokenizer_path: str | None = None, max_length: int | None = None,
                 system_prompt: str = '', special_token_ids: dict | None = None,
                 stand_in_vocab_size: int = 200):
        super().__init__()
        self.tokenizer = None
        ids = dict(TINY_SPECIAL_TOKEN_IDS)
        if tokenizer_path is not None:
            ids = self._load_tokenizer(Path(tokenizer_path).expanduser())
        ids.update(special_token_ids or {})
        missing = [k for k in ('bos', 'pad', 'image_start') if ids.get(k) is None]
        if missing:
            raise ValueError(f'JanusPromptEncoder: no id for {missing}; pass special_token_ids')
        self.special_token_ids = {k: int(ids[k]) for k in ('bos', 'pad', 'image_start')}
        self.max_length, self.system_prompt = max_length, system_prompt
        self.stand_in_vocab_size = stand_in_vocab_size
        # outputs follow .to(device) through this empty buffer
        self.register_buffer('_device_probe', torch.zeros(0), persistent=False)

    def _load_tokenizer(self, path: Path) -> dict:
        transformers = _require_transformers()
        if not path.is_dir():
            raise FileNotFoundError(_missing_file_message(path, 'Janus tokenizer directory',
                                                          JANUS_SOURCE, None))
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path),
                                                                        local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f'no usable tokenizer in {path} ({exc}); it needs the '
                                    f'tokenizer files (tokenizer.json, tokenizer_config.json, '
                                    f'special_tokens_map.json) from {JANUS_SOURCE}') from exc
        vocab = self.tokenizer.get_vocab()
        return dict(bos=self.tokenizer.bos_token_id, pad=vocab.get(PAD_TAG),
                    image_start=vocab.get(IMAGE_START_TAG))

    def format_prompt(self, prompt: str) -> str:
        """The official SFT text of a prompt (without BOS and the image start tag)."""
        system = f'{self.system_prompt}\n\n' if self.system_prompt else ''
        return f'{system}{USER_ROLE}: {prompt}\n\n{ASSISTANT_ROLE}:'

    def _text_ids(self, prompt) -> list[int]:
        if not isinstance(prompt, str):
            return [int(t) for t in prompt]
        text = self.format_prompt(prompt)
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return [zlib.crc32(w.encode()) % self.stand_in_vocab_size for w in text.split()]

    def tokenize(self, prompts: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids LongTensor (B, T), mask LongTensor (B, T))``, left padded with the pad id."""
        if isinstance(prompts, str):
            raise TypeError('JanusPromptEncoder expects a list of prompts, got one string; wrap '
                            'it in a list')
        special = self.special_token_ids
        rows = [[special['bos'], *self._text_ids(p), special['image_start']] for p in prompts]
        longest = max((len(r) for r in rows), default=0)
        T = longest if self.max_length is None else self.max_length
        if longest > T:
            raise ValueError(f'a prompt has {longest} tokens with the template, more than '
                             f'max_length={T}; shorten it or raise max_length')
        ids = torch.full((len(rows), T), special['pad'], dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, T - len(row):] = torch.tensor(row)
            mask[i, T - len(row):] = 1
        return ids, mask

    def forward(self, prompts: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(ids (B, T), mask (B, T))`` on this module's device."""
        ids, mask = self.tokenize(prompts)
        return ids.to(self._device_probe.device), mask.to(self._device_probe.device)


__all__ = ['JanusPromptEncoder']
