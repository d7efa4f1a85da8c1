"""Janus-Pro's image-generation path as a rankekit policy, plus its prompt encoder.

Re-implemented from the conventions of deepseek-ai/Janus @ 1daa72f (``MultiModalityCausalLM`` and
the loop of ``generation_inference.py``); the ``janus`` package is not needed. The language model
is transformers' ``LlamaModel``; the generation heads are small modules with the official key
names, so an official Hugging Face directory (deepseek-ai/Janus-Pro-1B) loads strictly:

- ``language_model.model.*`` (LlamaModel) and ``language_model.lm_head.weight`` (the text head,
  unused for images, kept so that strict loading sees every language-model key);
- ``gen_embed`` Embedding(image_token_size, n_embed): image token -> 8-d vector (not the VQ
  codebook), ``gen_aligner`` MLP (Linear, GELU, Linear) -> model width: together they embed the
  previous image token (the official ``prepare_gen_img_embeds``);
- ``gen_head``: ``output_mlp_projector`` Linear, GELU, ``vision_head`` Linear -> image logits.

The understanding path (``vision_model.*``, ``aligner.*``) is skipped with a note, and
``gen_vision_model.*`` is the VQ tokenizer (:class:`rankekit.tokenizers.JanusVQ`).

Prompt convention (what :class:`JanusPromptEncoder` returns and the policy takes as ``cond``):
``cond`` is a (B, T) LongTensor of prompt token ids, LEFT padded, each row
``[BOS] tokens("<|User|>: {prompt}\\n\\n<|Assistant|>:") [<begin_of_image>]``, and ``cond_mask``
(B, T) is 1 on those tokens. Pad slots are masked out of attention and positions count from the
first real token, so a row gives the same result whatever padding it got.

CFG follows the official layout: rows interleave cond, uncond, cond, uncond...; an uncond row is
its prompt with every token strictly between BOS and ``<begin_of_image>`` replaced by the pad
token (id of ``<｜▁pad▁｜>``), same mask; logits combine as ``u + scale * (c - u)``.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from rankekit.registry import POLICIES
from rankekit.utils.weights import (WeightsFileError, _format_report, _missing_file_message,
                                    extract_state_dict,
                                    load_sharded_state_dict,
                                    load_weights_file,
                                    state_dict_report)

from .sampling import (SampleOutput, cfg_combine, check_sampling_args, draw_uniforms,
                       sample_from_logits, sampler_logprobs, sampling_grad_mode, token_logprobs)

JANUS_SOURCE = ('the Hugging Face repo deepseek-ai/Janus-Pro-1B '
                '(huggingface.co/deepseek-ai/Janus-Pro-1B)')
INSTALL_HINT = 'pip install "rankekit[janus]"'
PAD_TAG = '<\uff5c\u2581pad\u2581\uff5c>'  # '<｜▁pad▁｜>', Janus's pad token
IMAGE_START_TAG = '<begin_of_image>'
USER_ROLE, ASSISTANT_ROLE = '<|User|>', '<|Assistant|>'

# top-level prefixes of the full Janus state_dict that the policy does not own (never read)
OTHER_PREFIXES = {'vision_model.': 'understanding path, not used for generation',
                  'aligner.': 'understanding path, not used for generation',
                  'gen_vision_model.': 'the VQ tokenizer, loaded by JanusVQ(pretrained=...)'}

# language_config keys that rankekit sets itself (dtype, attention kernel) or that are metadata
_DROPPED_LM_KEYS = ('model_type', '_attn_implementation', 'attn_implementation', 'torch_dtype',
                    'dtype', 'architectures', 'transformers_version', '_name_or_path')

ARCH_SETTINGS = {
    # Janus-Pro-1B. hidden 2048 / 24 layers / 16 heads are the tech report's; vocab 102400,
    # intermediate 5632, 16 KV heads and max positions 16384 are UNVERIFIED (they come from the
    # Janus-1.3B config, see reference manifests/janus_pro_1b_gen.json). A real directory's
    # config.json always overrides them.
    'Janus-Pro-1B': dict(
        language_config=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                             num_attention_heads=16, num_key_value_heads=16, vocab_size=102400,
                             max_position_embeddings=16384),
        image_token_size=16384, image_embed_dim=8, image_token_embed=2048, aligner_depth=2,
        image_token_num=576),
    # Janus-Pro-7B: hidden 4096 / 30 layers / 32 heads (tech report); intermediate 11008, 32 KV
    # heads and vocab 102400 are UNVERIFIED (those of DeepSeek-LLM-7B, its language model). Used
    # by the memory planner; a real directory's config.json always overrides them.
    'Janus-Pro-7B': dict(
        language_config=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                             num_attention_heads=32, num_key_value_heads=32, vocab_size=102400,
                             max_position_embeddings=16384),
        image_token_size=16384, image_embed_dim=8, image_token_embed=4096, aligner_depth=2,
        image_token_num=576),
    # the reference tiny model (tests/data/reference/janus_tiny) and its own token ids
    'tiny': dict(
        language_config=dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, vocab_size=206,
                             max_position_embeddings=256),
        image_token_size=256, image_embed_dim=8, image_token_embed=64, aligner_depth=2,
        image_token_num=16, pad_token_id=202, image_start_token_id=203),
}
#: the tiny reference vocabulary's special ids (also the stand-in tokenizer's)
TINY_SPECIAL_TOKEN_IDS = dict(bos=200, pad=202, image_start=203)


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f'the Janus-Pro components need transformers: {INSTALL_HINT}') from exc
    return transformers


def _log(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(msg, logger='current')


# ------------------------------------------------------------------ Hugging Face directories
def read_hf_config(path: str | os.PathLike, what: str = 'Janus-Pro checkpoint directory',
                   where: str | None = None) -> dict:
    """``config.json`` of a Hugging Face model directory, with clear errors."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise WeightsFileError(_missing_file_message(path, what, JANUS_SOURCE, where))
    file = path / 'config.json'
    if not file.is_file():
        raise WeightsFileError(_missing_file_message(file, f'config.json of the {what}',
                                                     JANUS_SOURCE, where))
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsFileError(f'{file} is not valid JSON ({exc}); copy it again from '
                               f'{JANUS_SOURCE}') from exc


def read_janus_weights(path: str | os.PathLike, include: str,
                       what: str = 'Janus-Pro checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """Tensors whose keys match the regex ``include``, from a Janus directory or weights file.

    A directory is read with :func:`~rankekit.utils.weights.load_sharded_state_dict`
    (``model.safetensors`` / ``pytorch_model.bin``, single or sharded with an index json; shards
    holding no wanted key are not read), a file with ``load_weights_file`` (weights only).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return load_sharded_state_dict(path, include=include, what=what, source=JANUS_SOURCE)
    state = extract_state_dict(load_weights_file(path, what=what, source=JANUS_SOURCE,
                                                 where=str(path)))
    pattern = re.compile(include)
    return OrderedDict((k, v) for k, v in state.items() if pattern.search(k))


def _settings_from_hf_config(cfg: dict, file: str) -> dict:
    """JanusProPolicy arguments from a ``MultiModalityCausalLM`` config.json."""
    need = ('language_config', 'gen_vision_config', 'gen_aligner_config', 'gen_head_config')
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f'{file} is not a Janus MultiModalityCausalLM config: it lacks {missing}')
    vision = cfg['gen_vision_config'].get('params', {})
    aligner = cfg['gen_aligner_config'].get('params', {})
    head = cfg['gen_head_config'].get('params', {})
    if aligner.get('projector_type', 'mlp_gelu') != 'mlp_gelu':
        raise ValueError(f"{file}: gen_aligner projector_type {aligner['projector_type']!r} is "
                         "not supported (Janus generation uses 'mlp_gelu')")
    if aligner.get('input_dim', vision['n_embed']) != vision['n_embed'] or \
            head.get('image_token_size', vision['image_token_size']) != vision['image_token_size']:
        raise ValueError(f'{file}: gen_aligner input_dim / gen_head image_token_size do not '
                         f'match gen_vision_config params {vision}')
    language = {k: v for k, v in cfg['language_config'].items() if k not in _DROPPED_LM_KEYS}
    return dict(language_config=language, image_token_size=vision['image_token_size'],
                image_embed_dim=vision['n_embed'], aligner_width=aligner.get('n_embed'),
                head_width=head.get('n_embed'), image_token_embed=head.get('image_token_embed'),
                aligner_depth=aligner.get('depth', 1))


def special_token_ids_from_dir(path: str | os.PathLike) -> dict[str, int]:
    """``pad`` / ``image_start`` ids found in a directory's tokenizer json files (maybe none)."""
    path = Path(path)
    found = {}
    wanted = {PAD_TAG: 'pad', IMAGE_START_TAG: 'image_start'}
    tok = path / 'tokenizer.json'
    if tok.is_file():
        for entry in json.loads(tok.read_text()).get('added_tokens', []):
            if entry.get('content') in wanted:
                found[wanted[entry['content']]] = int(entry['id'])
    conf = path / 'tokenizer_config.json'
    if conf.is_file():
        for idx, entry in json.loads(conf.read_text()).get('added_tokens_decoder', {}).items():
            if entry.get('content') in wanted:
                found.setdefault(wanted[entry['content']], int(idx))
    return found


# ------------------------------------------------------------------ generation heads
class MlpGeluProjector(nn.Module):
    """Janus ``MlpProjector`` of type mlp_gelu: Linear, then (GELU, Linear) x (depth - 1)."""

    def __init__(self, in_dim: int, width: int, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f'gen_aligner depth must be >= 1, got {depth}')
        modules = [nn.Linear(in_dim, width)]
        for _ in range(depth - 1):
            modules += [nn.GELU(), nn.Linear(width, width)]
        self.layers = nn.Sequential(*modules)  # keys layers.0, layers.2, ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VisionHead(nn.Module):
    """Janus ``vision_head``: hidden state -> image-token logits (Linear, GELU, Linear)."""

    def __init__(self, width: int, image_token_embed: int, image_token_size: int):
        super().__init__()
        self.output_mlp_projector = nn.Linear(width, image_token_embed)
        self.vision_activation = nn.GELU()
        self.vision_head = nn.Linear(image_token_embed, image_token_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_head(self.vision_activation(self.output_mlp_projector(x)))


class LanguageModel(nn.Module):
    """Key container mirroring ``LlamaForCausalLM``: ``model`` (LlamaModel) and ``lm_head``.

    The text head is never used for images; it exists for strict loading and stays frozen (it
    would get no gradient anyway, and a frozen parameter is skipped by optimizers and DDP).
    """

    def __init__(self, config, keep_lm_head: bool = True):
        super().__init__()
        from transformers import LlamaModel
        self.model = LlamaModel(config)
        if keep_lm_head:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.lm_head.requires_grad_(False)


# ------------------------------------------------------------------ the policy
@POLICIES.register_module()
class JanusProPolicy(nn.Module):
    """Janus-Pro image generation (LLaMA + gen heads, official keys) as a KV-cache CFG policy.

    ``cond`` / ``cond_mask`` are prompt token ids (B, T) and their mask, LEFT padded (see the
    module docstring; :class:`JanusPromptEncoder` makes them). Same API as
    :class:`~rankekit.policies.LlamaGenGPT`: ``forward`` (teacher-forced logits), ``log_probs``
    (conditional only) and ``sample`` (official interleaved CFG rows, transformers KV cache).

    Args:
        arch: preset 'Janus-Pro-1B' (language sizes partly unverified, see ``ARCH_SETTINGS``) or
            'tiny' (the reference tiny model). A pretrained directory's config.json overrides
            it, and explicit arguments override both.
        pretrained: an official Hugging Face directory (config.json + model.safetensors /
            pytorch_model.bin, single or sharded) or a single weights file (then the
            architecture comes from ``arch`` / the arguments). Loaded strictly by default.
        language_config: LlamaConfig fields, merged over the preset / config.json ones.
        image_token_size: image codebook size (the policy's vocabulary); image_embed_dim:
            ``gen_embed`` width (8); image_token_embed: ``gen_head`` inner width (default: model
            width); aligner_depth: ``gen_aligner`` depth.
        image_token_num: tokens per image (576 = 24x24 for 384 px); must be a square.
        pad_token_id: id of ``<｜▁pad▁｜>``, used to build the CFG uncond rows (read from the
            directory's tokenizer.json when not given); image_start_token_id: id of
            ``<begin_of_image>``, checked at the end of every prompt when known.
        keep_lm_head: build the (unused, frozen) text head; False saves vocab x width parameters
            per copy of the policy, and its key in the file is then skipped with a note.
        strict: strict loading of ``pretrained``.
        attn_implementation: transformers attention kernel ('sdpa' or 'eager').
    """

    info_example = dict(type='JanusProPolicy', arch='tiny')
    #: what model.lora adapts by default: every linear layer of the LLaMA decoder layers
    lora_target_modules = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                           'down_proj')

    def __init__(self, arch: str | None = None, pretrained: str | None = None, *,
                 language_config: dict | None = None, image_token_size: int | None = None,
                 image_embed_dim: int | None = None, image_token_embed: int | None = None,
                 aligner_depth: int | None = None, image_token_num: int | None = None,
                 pad_token_id: int | None = None, image_start_token_id: int | None = None,
                 keep_lm_head: bool = True, strict: bool = True,
                 attn_implementation: str = 'sdpa'):
        super().__init__()
        transformers = _require_transformers()
        if arch is not None and arch not in ARCH_SETTINGS:
            raise ValueError(f'JanusProPolicy: unknown arch {arch!r}; choose one of '
                             f'{sorted(ARCH_SETTINGS)} or give pretrained=<directory>')
        settings = {k: (dict(v) if isinstance(v, dict) else v)
                    for k, v in ARCH_SETTINGS.get(arch, {}).items()}
        if pretrained is not None and not Path(pretrained).expanduser().is_file():
            cfg = read_hf_config(pretrained, where=str(pretrained))
            settings.update(_settings_from_hf_config(cfg, str(Path(pretrained) / 'config.json')))
            found = special_token_ids_from_dir(Path(pretrained).expanduser())
            settings['pad_token_id'] = found.get('pad', settings.get('pad_token_id'))
            settings['image_start_token_id'] = found.get('image_start',
                                                         settings.get('image_start_token_id'))
        given = dict(image_token_size=image_token_size, image_embed_dim=image_embed_dim,
                     image_token_embed=image_token_embed, aligner_depth=aligner_depth,
                     image_token_num=image_token_num, pad_token_id=pad_token_id,
                     image_start_token_id=image_start_token_id)
        settings.update({k: v for k, v in given.items() if v is not None})
        lm_fields = {**settings.get('language_config', {}), **(language_config or {})}
        if not lm_fields or 'image_token_size' not in settings:
            raise ValueError('JanusProPolicy needs arch=..., pretrained=<Janus directory> or '
                             'explicit language_config and image_token_size')
        lm_fields = {'rms_norm_eps': 1e-6, 'tie_word_embeddings': False, **lm_fields}
        lm_config = transformers.LlamaConfig(**lm_fields)
        lm_config._attn_implementation = attn_implementation
        if lm_config.tie_word_embeddings:
            raise ValueError('JanusProPolicy: tie_word_embeddings=True is not a Janus layout')
        width = lm_config.hidden_size
        for key in ('aligner_width', 'head_width'):
            if settings.get(key) not in (None, width):
                raise ValueError(f'Janus config: gen_{key.split("_")[0]} n_embed '
                                 f'{settings[key]} must equal the language model width {width}')
        self._image_token_num = int(settings.get('image_token_num', 576))
        grid = math.isqrt(self._image_token_num)
        if grid * grid != self._image_token_num:
            raise ValueError(f'image_token_num must be a square number, got '
                             f'{self._image_token_num}')
        self.pad_token_id = settings.get('pad_token_id')
        self.image_start_token_id = settings.get('image_start_token_id')
        self.config = dict(arch=arch, language_config=lm_config.to_dict(),
                           image_token_size=int(settings['image_token_size']),
                           image_embed_dim=int(settings.get('image_embed_dim', 8)),
                           image_token_embed=int(settings.get('image_token_embed') or width),
                           aligner_depth=int(settings.get('aligner_depth', 2)),
                           image_token_num=self._image_token_num)

        # module order = the official MultiModalityCausalLM's generation part
        self.gen_aligner = MlpGeluProjector(self.config['image_embed_dim'], width,
                                            self.config['aligner_depth'])
        self.gen_head = VisionHead(width, self.config['image_token_embed'],
                                   self.config['image_token_size'])
        self.gen_embed = nn.Embedding(self.config['image_token_size'],
                                      self.config['image_embed_dim'])
        self.language_model = LanguageModel(lm_config, keep_lm_head)
        self.load_report = None
        if pretrained is not None:
            self.load_report = self.load_pretrained(pretrained, strict=strict)

    # ------------------------------------------------------------------ loading
    def load_pretrained(self, path: str, strict: bool = True) -> dict:
        """Load an official Janus directory / weights file; returns the key report.

        Every key except the understanding path's and the VQ tokenizer's (never read, see
        ``OTHER_PREFIXES``) is compared with this policy; ``strict``: any missing / unexpected
        key raises. Shape mismatches always raise.
        """
        skip = list(OTHER_PREFIXES)
        if not hasattr(self.language_model, 'lm_head'):
            skip.append('language_model.lm_head.')
        include = '^(?!' + '|'.join(re.escape(p) for p in skip) + ')'
        state = read_janus_weights(path, include)
        report = state_dict_report(self, state)
        if report['mismatched'] or (strict and (report['missing'] or report['unexpected'])):
            raise WeightsFileError(f'Janus-Pro checkpoint {path} does not fit JanusProPolicy '
                                   f'(wrong config?): {_format_report(report)}')
        own = self.state_dict()
        self.load_state_dict(OrderedDict((k, v) for k, v in state.items() if k in own),
                             strict=False)
        notes = '; '.join(f'{p}* ({OTHER_PREFIXES.get(p, "keep_lm_head=False")})' for p in skip)
        _log(f'JanusProPolicy: loaded {len(state)} tensors from {path}; not read: {notes}')
        return report

    # ------------------------------------------------------------------ properties
    @property
    def num_image_tokens(self) -> int:
        """Tokens per image (576 = 24 x 24 for Janus-Pro at 384 px)."""
        return self._image_token_num

    @property
    def grid_size(self) -> int:
        return math.isqrt(self._image_token_num)

    @property
    def blocks(self) -> nn.ModuleList:
        """The LLaMA decoder layers (units of activation checkpointing and FSDP sharding)."""
        return self.language_model.model.layers

    @property
    def vocab_size(self) -> int:
        """Image codebook size (the policy's output vocabulary), not the text vocabulary."""
        return self.config['image_token_size']

    @property
    def text_vocab_size(self) -> int:
        return self.config['language_config']['vocab_size']

    # ------------------------------------------------------------------ inputs
    def image_embeds(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings of image tokens: ``gen_aligner(gen_embed(tokens))`` (official
        ``prepare_gen_img_embeds``)."""
        return self.gen_aligner(self.gen_embed(tokens))

    def check_prompt(self, cond_ids: torch.Tensor,
                     cond_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate left-padded prompt ids (B, T) and mask; returns (long ids, long mask)."""
        if cond_ids.dim() != 2 or cond_ids.is_floating_point():
            raise ValueError(f'JanusProPolicy takes prompt token ids (B, T) as cond (a '
                             f'LongTensor, e.g. from JanusPromptEncoder), got '
                             f'{cond_ids.dtype} of shape {tuple(cond_ids.shape)}')
        if cond_mask.shape != cond_ids.shape:
            raise ValueError(f'cond_mask must be (B, T) = {tuple(cond_ids.shape)}, got '
                             f'{tuple(cond_mask.shape)}')
        mask, ids = cond_mask.long(), cond_ids.long()
        if ids.is_meta:  # memory planning: shapes only, no values to check
            return ids, mask
        if bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError('cond_mask must use LEFT padding (pads first, prompt tokens at the '
                             'end); got a 1 followed by a 0')
        if bool((mask.sum(1) < 2).any()):
            raise ValueError('every prompt needs at least BOS and <begin_of_image> (2 tokens)')
        valid = ids[mask.bool()]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.text_vocab_size):
            raise ValueError(f'prompt ids must lie in [0, {self.text_vocab_size}); got '
                             f'[{int(valid.min())}, {int(valid.max())}]')
        if self.image_start_token_id is not None and \
                bool((ids[:, -1] != self.image_start_token_id).any()):
            raise ValueError(f'every prompt must end with <begin_of_image> '
                             f'(id {self.image_start_token_id}); build prompts with '
                             f'JanusPromptEncoder')
        return ids, mask

    def uncond_ids(self, cond_ids: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        """The official unconditional prompt: tokens between BOS and <begin_of_image> -> pad."""
        if self.pad_token_id is None:
            raise ValueError(f'JanusProPolicy needs pad_token_id (the id of {PAD_TAG}) for CFG: '
                             'pass it, or load a directory that holds tokenizer.json')
        ids, mask = self.check_prompt(cond_ids, cond_mask)
        T = ids.shape[1]
        bos_at = T - mask.sum(1, keepdim=True)  # first real token of each row
        slot = torch.arange(T, device=ids.device)
        inner = (slot > bos_at) & (slot < T - 1)
        return ids.masked_fill(inner, self.pad_token_id)

    def cfg_rows(self, cond_ids: torch.Tensor,
                 cond_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2B, T) ids and mask in the official order: cond, uncond, cond, uncond, ..."""
        ids, mask = self.check_prompt(cond_ids, cond_mask)
        rows = torch.stack([ids, self.uncond_ids(ids, mask)], 1).flatten(0, 1)
        return rows, mask.repeat_interleave(2, 0)

    @staticmethod
    def positions(mask: torch.Tensor) -> torch.Tensor:
        """Position ids counting from each row's first real token (pads get 0)."""
        return (mask.cumsum(1) - 1).clamp(min=0)

    # ------------------------------------------------------------------ training / scoring
    def _hidden(self, cond_ids, cond_mask, tokens) -> torch.Tensor:
        ids, mask = self.check_prompt(cond_ids, cond_mask)
        B, T = ids.shape
        if tokens.dim() != 2 or tokens.shape[0] != B or not \
                1 <= tokens.shape[1] <= self.num_image_tokens:
            raise ValueError(f'tokens must be (B={B}, L) with 1 <= L <= {self.num_image_tokens}, '
                             f'got {tuple(tokens.shape)}')
        tokens = tokens.long()
        lm = self.language_model.model
        x = torch.cat([lm.embed_tokens(ids), self.image_embeds(tokens[:, :-1])], 1)
        attn = torch.cat([mask, mask.new_ones(B, tokens.shape[1] - 1)], 1)
        positions, layer_mask = self.positions(attn), attn
        if x.is_meta:  # memory planning: HF's mask builder reads values; give it its (B,1,S,S)
            S = attn.shape[1]
            causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
            layer_mask = causal[None, None] & attn.bool()[:, None, None, :]
        out = lm(inputs_embeds=x, attention_mask=layer_mask, position_ids=positions,
                 use_cache=False)
        return out.last_hidden_state[:, T - 1:]

    def forward(self, cond_ids: torch.Tensor, cond_mask: torch.Tensor,
                tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: raw logits (B, L, V_img), ``logits[:, i]`` predicting ``tokens[:, i]``.

        Step 0 is read at the ``<begin_of_image>`` position; for CFG logits pass
        :meth:`cfg_rows` and the tokens repeated twice (``repeat_interleave(2, 0)``).
        """
        return self.gen_head(self._hidden(cond_ids, cond_mask, tokens)).float()

    def log_probs(self, cond_ids: torch.Tensor, cond_mask: torch.Tensor,
                  tokens: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs (B, L) of ``tokens``: conditional rows only, no CFG."""
        return token_logprobs(self.forward(cond_ids, cond_mask, tokens), tokens.long())

    def sampler_log_probs(self, cond_ids: torch.Tensor, cond_mask: torch.Tensor,
                          tokens: torch.Tensor, cfg_scale: float = 5.0,
                          cfg_first_n: int | None = None, temperature: float = 1.0,
                          top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
        """Per-token log-probs (B, L) of ``tokens`` under the distribution :meth:`sample` draws
        from with these settings: the official interleaved cond / uncond rows combined by CFG,
        then temperature, top-k, top-p (see ``sampling.sampler_logprobs``); teacher forced."""
        check_sampling_args(self.vocab_size, temperature, top_k, top_p)
        tokens = tokens.long()
        if cfg_scale == 1.0 or cfg_first_n == 0:
            return sampler_logprobs(self.forward(cond_ids, cond_mask, tokens), None, tokens, 1.0,
                                    None, temperature, top_k, top_p)
        ids, mask = self.cfg_rows(cond_ids, cond_mask)
        logits = self.forward(ids, mask, tokens.repeat_interleave(2, 0))
        return sampler_logprobs(logits[0::2], logits[1::2], tokens, cfg_scale, cfg_first_n,
                                temperature, top_k, top_p)

    # ------------------------------------------------------------------ sampling
    def sample(self, cond_ids: torch.Tensor, cond_mask: torch.Tensor,
               num_tokens: int | None = None, cfg_scale: float = 5.0,
               cfg_first_n: int | None = None, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, generator: torch.Generator | None = None, seeds=None,
               return_topk_logits: int = 0,
               uniforms: torch.Tensor | None = None) -> SampleOutput:
        """Sample image tokens with a transformers KV cache (official CFG row layout).

        Args:
            cond_ids, cond_mask: prompt ids (B, T) and mask, left padded.
            num_tokens: tokens to draw (default :attr:`num_image_tokens`).
            cfg_scale: guidance weight (Janus default 5); 1 runs the conditional rows only.
            cfg_first_n: guide the first N tokens only (the uncond rows are dropped after).
            temperature, top_k, top_p: applied to the CFG-combined logits in this order.
            generator / seeds: RNG for the draws (see ``sampling.draw_uniforms``).
            uniforms: (B, L) uniforms in [0, 1) to draw with, instead of any RNG.
            return_topk_logits: also return the k largest combined logits (and ids) per step.
        """
        with sampling_grad_mode(self):
            out = self._sample(cond_ids, cond_mask, num_tokens, cfg_scale, cfg_first_n,
                               temperature, top_k, top_p, generator, seeds, return_topk_logits,
                               uniforms)
        # clones leave inference mode, so the outputs can feed autograd (log_probs, losses)
        return SampleOutput(*(t.clone() if t is not None else None for t in out))

    def _sample(self, cond_ids, cond_mask, num_tokens, cfg_scale, cfg_first_n, temperature,
                top_k, top_p, generator, seeds, return_topk_logits, uniforms=None):
        check_sampling_args(self.vocab_size, temperature, top_k, top_p)
        L = self.num_image_tokens if num_tokens is None else int(num_tokens)
        if not 1 <= L <= self.num_image_tokens:
            raise ValueError(f'num_tokens must be in [1, {self.num_image_tokens}], got {L}')
        if not 0 <= return_topk_logits <= self.vocab_size:
            raise ValueError(f'return_topk_logits must be in [0, {self.vocab_size}], got '
                             f'{return_topk_logits}')
        ids, mask = self.check_prompt(cond_ids, cond_mask)
        B, device = ids.shape[0], ids.device
        uniforms = draw_uniforms(B, L, seeds=seeds, generator=generator, device=device,
                                 uniforms=uniforms)
        cfg_steps = 0 if cfg_scale == 1.0 else (L if cfg_first_n is None else min(cfg_first_n, L))
        if cfg_steps:
            ids, mask = self.cfg_rows(ids, mask)
        per_item = ids.shape[0] // B  # 2 while guiding: rows 2b (cond) and 2b+1 (uncond)
        lm = self.language_model.model
        out = lm(inputs_embeds=lm.embed_tokens(ids), attention_mask=mask,
                 position_ids=self.positions(mask), use_cache=True)
        cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
        first_pos = mask.sum(1, keepdim=True)  # position of the first image token input

        tokens = torch.empty(B, L, dtype=torch.long, device=device)
        logprobs = torch.empty(B, L, dtype=torch.float32, device=device)
        k_top = return_topk_logits
        top_vals = torch.empty(B, L, k_top, device=device) if k_top else None
        top_ids = torch.empty(B, L, k_top, dtype=torch.long, device=device) if k_top else None
        for i in range(L):
            if i:
                if i == cfg_steps and per_item == 2:  # guidance over: keep the cond rows
                    keep = torch.arange(0, 2 * B, 2, device=device)
                    cache.batch_select_indices(keep)
                    mask, first_pos, per_item = mask[keep], first_pos[keep], 1
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
                x = self.image_embeds(tokens[:, i - 1].repeat_interleave(per_item))[:, None]
                out = lm(inputs_embeds=x, attention_mask=mask, position_ids=first_pos + i - 1,
                         past_key_values=cache, use_cache=True)
                cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
            logits = self.gen_head(hidden).float()
            if per_item == 2:
                logits = cfg_combine(logits[0::2], logits[1::2], cfg_scale)
            if k_top:
                top_vals[:, i], top_ids[:, i] = logits.topk(k_top, dim=-1)
            tokens[:, i], logprobs[:, i] = sample_from_logits(logits, uniforms[:, i], temperature,
                                                              top_k, top_p)
        return tokens, logprobs, top_vals, top_ids


# ------------------------------------------------------------------ the prompt encoder
__all__ = ['JanusProPolicy', 'read_janus_weights', 'read_hf_config',
           'special_token_ids_from_dir', 'ARCH_SETTINGS']
