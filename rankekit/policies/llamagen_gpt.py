"""LlamaGen's text-to-image GPT, state_dict compatible, with a fast KV-cache sampler.

The architecture is LlamaGen's t2i ``Transformer`` (FoundationVision/LlamaGen, ce98ec4): a caption
projection MLP with a learned null caption, Llama blocks (RMSNorm, fused-qkv attention with 2-D
RoPE, SwiGLU FFN), an untied output head. Key names, shapes and the weight init (including the
order in which it consumes the RNG) are the official ones, so official checkpoints load strictly.

Conventions (all LlamaGen's):
- the caption is a (B, T, caption_dim) embedding with LEFT padding: valid tokens at the end, pad
  vectors zero, ``cond_mask`` (B, T) 1 for valid; T < cls_token_num is left-padded here;
- the 2-D RoPE table has all-zero rows for the caption positions, so caption queries and keys are
  zero after rotation (every image query gives every caption key the score 0);
- attention mask: causal, caption pad columns masked, diagonal always allowed;
- CFG: the null caption is ``uncond_embedding[:T]``; the uncond rows keep the conditional mask;
  logits are combined ``u + (c - u) * scale`` before temperature and top-k.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import POLICIES
from rankekit.utils.weights import LLAMAGEN_GPT_IGNORE, load_model_weights
from rankekit.utils.memory import activation_dtype

from .sampling import (SampleOutput, cfg_combine, check_sampling_args, draw_uniforms,
                       sample_from_logits, sampler_logprobs, sampling_grad_mode, token_logprobs)

# text-conditional presets: LlamaGen's GPT_models depths/widths with its t2i settings
_T2I = dict(vocab_size=16384, block_size=256, cls_token_num=120, caption_dim=2048)
ARCH_SETTINGS = {
    'GPT-B': dict(n_layer=12, n_head=12, dim=768, **_T2I),
    'GPT-L': dict(n_layer=24, n_head=16, dim=1024, **_T2I),
    'GPT-XL': dict(n_layer=36, n_head=20, dim=1280, **_T2I),
    'GPT-XXL': dict(n_layer=48, n_head=24, dim=1536, **_T2I),
    # the reference tiny model (tests/data/reference/gpt_tiny.pt)
    'tiny': dict(n_layer=2, n_head=4, dim=64, vocab_size=64, block_size=16, cls_token_num=8,
                 caption_dim=32),
}
NULL_CAPTION_ROWS = 120  # CaptionEmbedder's default token_num: the buffer always has 120 rows


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def rope_2d_table(grid_size: int, head_dim: int, base: float,
                  cls_token_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (cls_token_num + grid_size**2, head_dim // 2) of LlamaGen's 2-D RoPE.

    Half of the rotated pairs encode the row, half the column; caption rows are all zero.
    """
    if head_dim % 4:
        raise ValueError(f'2-D RoPE needs head_dim divisible by 4, got {head_dim}')
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device='cpu')[:half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, device='cpu').float(), freqs)  # (g, head_dim/4)
    grid = torch.cat([angles[:, None].expand(-1, grid_size, -1),    # row angle
                      angles[None, :].expand(grid_size, -1, -1)],   # column angle
                     dim=-1).flatten(0, 1)                          # (g*g, head_dim/2)
    zeros = torch.zeros(cls_token_num, half, device='cpu')
    return torch.cat([zeros, grid.cos()]), torch.cat([zeros, grid.sin()])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, S, H, D) by the angles of cos/sin (S, D/2), in fp32."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2).type_as(x)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale (computed in fp32)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
                * self.weight)


class MLP(nn.Module):
    """Two bias-free linears with tanh-GELU: the caption projection."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate='tanh')
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Projects caption embeddings to the model width; holds the learned null caption."""

    def __init__(self, caption_dim: int, dim: int, uncond_prob: float,
                 token_num: int = NULL_CAPTION_ROWS):
        super().__init__()
        self.cap_proj = MLP(caption_dim, dim, dim)
        # a buffer (not trained), made after cap_proj so the init consumes the RNG as upstream
        self.register_buffer('uncond_embedding',
                             torch.randn(token_num, caption_dim) / caption_dim ** 0.5)
        self.uncond_prob = uncond_prob

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(caption)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, dropout_p: float):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout_p = dropout_p

    def forward(self, x: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        return F.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)), self.dropout_p, stochastic)


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) attention with fused qkv and 2-D RoPE.

    With ``cache`` (2, B, n_kv_head, S_max, head_dim) the new keys/values are written at
    slots ``slot:slot+n`` and the queries attend over the filled prefix ``:slot+n``.
    ``mask`` is broadcastable to (B, H, n, keys): bool ("may attend") or an additive float bias.
    """

    def __init__(self, dim: int, n_head: int, n_kv_head: int | None, attn_dropout_p: float,
                 resid_dropout_p: float):
        super().__init__()
        if dim % n_head:
            raise ValueError(f'dim={dim} must be divisible by n_head={n_head}')
        self.dim, self.n_head = dim, n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = dim // n_head
        self.kv_dim = self.n_kv_head * self.head_dim
        self.wqkv = nn.Linear(dim, dim + 2 * self.kv_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p, self.resid_dropout_p = attn_dropout_p, resid_dropout_p

    def forward(self, x, cos, sin, mask=None, cache=None, slot: int = 0, stochastic: bool = False):
        B, n, _ = x.shape
        q, k, v = self.wqkv(x).split([self.dim, self.kv_dim, self.kv_dim], dim=-1)
        q = apply_rope(q.view(B, n, self.n_head, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(k.view(B, n, self.n_kv_head, self.head_dim), cos, sin).transpose(1, 2)
        v = v.view(B, n, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            cache[0, :, :, slot:slot + n] = k
            cache[1, :, :, slot:slot + n] = v
            k, v = cache[0, :, :, :slot + n], cache[1, :, :, :slot + n]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout_p if stochastic else 0.0,
            enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).reshape(B, n, self.dim)
        return F.dropout(self.wo(y), self.resid_dropout_p, stochastic)


class TransformerBlock(nn.Module):
    """Pre-norm Llama block: x + attn(norm(x)), then + ffn(norm(.)), with drop-path."""

    def __init__(self, dim, n_head, n_kv_head, ffn_hidden, norm_eps, attn_dropout_p,
                 resid_dropout_p, ffn_dropout_p, drop_path_p):
        super().__init__()
        # construction order = upstream order (the init walks modules in this order)
        self.attention = Attention(dim, n_head, n_kv_head, attn_dropout_p, resid_dropout_p)
        self.feed_forward = FeedForward(dim, ffn_hidden, ffn_dropout_p)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.drop_path_p = drop_path_p

    def forward(self, x, cos, sin, mask=None, cache=None, slot: int = 0, stochastic: bool = False):
        a = self.attention(self.attention_norm(x), cos, sin, mask, cache, slot, stochastic)
        h = x + drop_path(a, self.drop_path_p, stochastic)
        f = self.feed_forward(self.ffn_norm(h), stochastic)
        return h + drop_path(f, self.drop_path_p, stochastic)


@POLICIES.register_module()
class LlamaGenGPT(nn.Module):
    """LlamaGen text-to-image GPT (official state_dict) with a fast KV-cache CFG sampler.

    Args:
        arch: preset 'GPT-B' | 'GPT-L' | 'GPT-XL' | 'GPT-XXL' (t2i: 120 caption tokens of dim
            2048, vocab 16384, block_size 256 = 16x16 grid; pass block_size=1024 for 512 px) or
            'tiny' (the reference tiny model). Explicit arguments override the preset.
        dim, n_layer, n_head, n_kv_head, multiple_of, ffn_dim_multiplier, rope_base, norm_eps,
        initializer_range, token_dropout_p, attn_dropout_p, resid_dropout_p, ffn_dropout_p,
        drop_path_rate, caption_dim, class_dropout_prob, vocab_size, cls_token_num, block_size:
            LlamaGen's ``ModelArgs`` fields, same meaning and defaults.
        model_type: only 't2i' is supported. num_classes, max_batch_size, max_seq_len: accepted
            for ModelArgs compatibility and unused (the sampler sizes its cache per call).
        pretrained: an official checkpoint (``{"model": state_dict}`` or a bare state_dict),
            loaded strictly.
    """

    info_example = dict(type='LlamaGenGPT', arch='tiny')
    #: what model.lora adapts by default: every linear layer of the transformer blocks
    lora_target_modules = ('wqkv', 'wo', 'w1', 'w2', 'w3')

    def __init__(self, arch: str | None = None, *, dim: int | None = None,
                 n_layer: int | None = None, n_head: int | None = None,
                 n_kv_head: int | None = None, multiple_of: int = 256,
                 ffn_dim_multiplier: float | None = None, rope_base: float = 10000,
                 norm_eps: float = 1e-5, initializer_range: float = 0.02,
                 token_dropout_p: float = 0.1, attn_dropout_p: float = 0.0,
                 resid_dropout_p: float = 0.1, ffn_dropout_p: float = 0.1,
                 drop_path_rate: float = 0.0, caption_dim: int | None = None,
                 class_dropout_prob: float = 0.1, vocab_size: int | None = None,
                 cls_token_num: int | None = None, block_size: int | None = None,
                 model_type: str = 't2i', num_classes: int = 1000, max_batch_size: int = 32,
                 max_seq_len: int = 2048, pretrained: str | None = None):
        super().__init__()
        if model_type != 't2i':
            raise ValueError(f"LlamaGenGPT supports model_type='t2i' only, got {model_type!r}")
        if arch is not None and arch not in ARCH_SETTINGS:
            raise ValueError(f'unknown arch {arch!r}; choose one of {sorted(ARCH_SETTINGS)} or '
                             f'give dim/n_layer/n_head')
        given = dict(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size,
                     block_size=block_size, cls_token_num=cls_token_num, caption_dim=caption_dim)
        cfg = {**_T2I, **ARCH_SETTINGS.get(arch, {}),
               **{k: v for k, v in given.items() if v is not None}}
        missing = [k for k in ('dim', 'n_layer', 'n_head') if k not in cfg]
        if missing:
            raise ValueError(f'LlamaGenGPT needs arch=... or explicit {missing}')
        grid = math.isqrt(cfg['block_size'])
        if grid * grid != cfg['block_size']:
            raise ValueError(f'block_size must be a square number of image tokens, got '
                             f'{cfg["block_size"]}')
        self.config = dict(arch=arch, n_kv_head=n_kv_head, multiple_of=multiple_of,
                           ffn_dim_multiplier=ffn_dim_multiplier, rope_base=rope_base,
                           norm_eps=norm_eps, initializer_range=initializer_range,
                           token_dropout_p=token_dropout_p, attn_dropout_p=attn_dropout_p,
                           resid_dropout_p=resid_dropout_p, ffn_dropout_p=ffn_dropout_p,
                           drop_path_rate=drop_path_rate, class_dropout_prob=class_dropout_prob,
                           **cfg)
        dim, n_layer, n_head = cfg['dim'], cfg['n_layer'], cfg['n_head']
        self.block_size, self._cls_token_num = cfg['block_size'], cfg['cls_token_num']
        self.class_dropout_prob, self.token_dropout_p = class_dropout_prob, token_dropout_p

        hidden = int(2 * 4 * dim / 3)
        if ffn_dim_multiplier is not None:
            hidden = int(ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, multiple_of)

        # module order = upstream order: the init below then draws the same random numbers
        self.cls_embedding = CaptionEmbedder(cfg['caption_dim'], dim, class_dropout_prob,
                                             max(NULL_CAPTION_ROWS, self._cls_token_num))
        self.tok_embeddings = nn.Embedding(cfg['vocab_size'], dim)
        drop_rates = torch.linspace(0, drop_path_rate, n_layer, device='cpu').tolist()
        self.layers = nn.ModuleList(
            TransformerBlock(dim, n_head, n_kv_head, hidden, norm_eps, attn_dropout_p,
                             resid_dropout_p, ffn_dropout_p, p) for p in drop_rates)
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, cfg['vocab_size'], bias=False)
        # RoPE tables stay plain fp32 attributes: not in the state_dict, not cast by .to(dtype)
        self._rope = rope_2d_table(grid, dim // n_head, rope_base, self._cls_token_num)
        self._init_weights(initializer_range)
        if pretrained:
            # checkpoints saved after sampling carry KV-cache buffers: not model weights
            load_model_weights(self, pretrained, strict=True, ignore=LLAMAGEN_GPT_IGNORE,
                               what='LlamaGen t2i GPT checkpoint',
                               source='https://huggingface.co/peizesun/llamagen_t2i')

    def _init_weights(self, std: float) -> None:
        # upstream: N(0, std) for every Linear/Embedding in module order, then a zero output head
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
        nn.init.zeros_(self.output.weight)

    # ------------------------------------------------------------------ properties
    @property
    def num_image_tokens(self) -> int:
        return self.block_size

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks (units of activation checkpointing and FSDP sharding)."""
        return self.layers

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def vocab_size(self) -> int:
        return self.config['vocab_size']

    @property
    def cls_token_num(self) -> int:
        return self._cls_token_num

    @property
    def caption_dim(self) -> int:
        return self.config['caption_dim']

    # ------------------------------------------------------------------ helpers
    def _rope_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope[0].device != device:
            self._rope = tuple(t.to(device) for t in self._rope)
        return self._rope

    def prepare_caption(self, cond: torch.Tensor,
                        cond_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check a caption batch, cast it to the model dtype and left-pad it to
        ``cls_token_num``; returns (cond, bool mask)."""
        if cond.dim() != 3 or cond.shape[-1] != self.caption_dim:
            raise ValueError(f'cond must be (B, T, caption_dim={self.caption_dim}), got '
                             f'{tuple(cond.shape)}')
        if cond_mask.shape != cond.shape[:2]:
            raise ValueError(f'cond_mask must be (B, T) = {tuple(cond.shape[:2])}, got '
                             f'{tuple(cond_mask.shape)}')
        T = cond.shape[1]
        if T > self.cls_token_num:
            raise ValueError(f'the caption has {T} tokens but this model takes at most '
                             f'cls_token_num={self.cls_token_num}; truncate it in the text '
                             f'encoder (max_length) or build the model with a larger cls_token_num')
        mask = cond_mask.bool()
        # values cannot be read on the meta device (memory planning): shapes only there
        if T > 1 and not mask.is_meta and bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError('cond_mask must use LlamaGen left padding (pads first, valid tokens '
                             'at the end); got a 1 followed by a 0')
        cond = cond.to(self.tok_embeddings.weight.dtype)
        if T < self.cls_token_num:
            pad = self.cls_token_num - T
            cond, mask = F.pad(cond, (0, 0, pad, 0)), F.pad(mask, (pad, 0))
        return cond, mask

    def null_caption(self, num_tokens: int) -> torch.Tensor:
        """The learned unconditional caption, ``uncond_embedding[:num_tokens]``."""
        return self.cls_embedding.uncond_embedding[:num_tokens]

    @staticmethod
    def attention_mask(cond_mask: torch.Tensor, seq_len: int,
                       caption_attention: str = 'causal') -> torch.Tensor:
        """(B, 1, S, S) bool attention mask, caption pad columns masked.

        'causal': causal everywhere, diagonal forced on; both LlamaGen's training mask
        (dataset/t2i.py) and its generate() mask. 'bidirectional': the RankE release's log-prob
        mask: the caption block attends to all of itself, causal elsewhere, no forced diagonal.
        """
        if caption_attention not in ('causal', 'bidirectional'):
            raise ValueError("caption_attention must be 'causal' or 'bidirectional', got "
                             f'{caption_attention!r}')
        B, T = cond_mask.shape
        device = cond_mask.device
        keys_ok = torch.ones(B, seq_len, dtype=torch.bool, device=device)
        keys_ok[:, :T] = cond_mask.bool()
        allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
        if caption_attention == 'bidirectional':
            allowed[:T, :T] = True
            return (allowed & keys_ok[:, None, :])[:, None]
        eye = torch.eye(seq_len, dtype=torch.bool, device=device)
        return ((allowed & keys_ok[:, None, :]) | eye)[:, None]

    def _hidden(self, cond, cond_mask, tokens, drop_caption=False, mask=None,
                stochastic=False, caption_attention: str = 'causal') -> torch.Tensor:
        """Teacher-forced final hidden states (B, L, dim) at the positions predicting tokens;
        without ``mask``, the :meth:`attention_mask` that ``caption_attention`` names."""
        cond, cond_mask = self.prepare_caption(cond, cond_mask)
        B, T = cond_mask.shape
        L = tokens.shape[1]
        if not 1 <= L <= self.block_size or tokens.shape[0] != B:
            raise ValueError(f'tokens must be (B={B}, L) with 1 <= L <= block_size='
                             f'{self.block_size}, got {tuple(tokens.shape)}')
        if drop_caption and self.class_dropout_prob > 0:
            # official caption dropout: the row's caption becomes the null caption, mask unchanged
            drop = torch.rand(B, device=cond.device) < self.class_dropout_prob
            cond = torch.where(drop[:, None, None], self.null_caption(T).to(cond), cond)
        x = torch.cat([self.cls_embedding(cond), self.tok_embeddings(tokens[:, :-1])], dim=1)
        x = F.dropout(x, self.token_dropout_p, stochastic)
        S = x.shape[1]
        if mask is None:
            mask = self.attention_mask(cond_mask, S, caption_attention)
        elif mask.shape[-2:] != (S, S):
            raise ValueError(f'mask must be (B, 1, {S}, {S}) for T={T} caption and {L} image '
                             f'tokens, got {tuple(mask.shape)}')
        cos, sin = (t[:S] for t in self._rope_on(x.device))
        for layer in self.layers:
            x = layer(x, cos, sin, mask, stochastic=stochastic)
        return self.norm(x[:, T - 1:])

    # ------------------------------------------------------------------ training / scoring
    def forward(self, cond: torch.Tensor, cond_mask: torch.Tensor, tokens: torch.Tensor,
                drop_caption: bool = False, mask: torch.Tensor | None = None,
                caption_attention: str = 'causal') -> torch.Tensor:
        """Teacher forcing: logits (B, L, V) with ``logits[:, i]`` predicting ``tokens[:, i]``.

        Dropout / drop-path follow ``self.training``. ``drop_caption`` replaces each row's caption
        by the null caption with probability ``class_dropout_prob`` (pretraining for CFG).
        ``mask`` overrides the attention mask ((B, 1, S, S) bool, S = T + L - 1);
        ``caption_attention='bidirectional'`` builds the release's (see :meth:`attention_mask`).
        """
        h = self._hidden(cond, cond_mask, tokens, drop_caption, mask, stochastic=self.training,
                         caption_attention=caption_attention)
        return self.output(h).float()

    def log_probs(self, cond: torch.Tensor, cond_mask: torch.Tensor,
                  tokens: torch.Tensor, caption_attention: str = 'causal') -> torch.Tensor:
        """Per-token log-probs (B, L) of ``tokens``: conditional only, no CFG, no dropout.

        By default the attention mask is the sampler's (causal, caption pad columns masked,
        diagonal on), which is also LlamaGen's own training mask, so that
        ``log_probs(sample().tokens) == sample().logprobs`` at cfg 1, temperature 1. The RankE
        release scores rollouts with a bidirectional mask over the caption block
        (``caption_attention='bidirectional'``): the caption then reads differently from how the
        sampler read it, so logp_old/logp_new/logp_ref are not the log-probs of the policy that
        drew the tokens. Dropout is never applied here, whatever the module mode.
        """
        h = self._hidden(cond, cond_mask, tokens, stochastic=False,
                         caption_attention=caption_attention)
        return token_logprobs(self.output(h), tokens)

    def sampler_log_probs(self, cond: torch.Tensor, cond_mask: torch.Tensor,
                          tokens: torch.Tensor, cfg_scale: float = 1.0,
                          cfg_first_n: int | None = None, temperature: float = 1.0,
                          top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
        """Per-token log-probs (B, L) of ``tokens`` under the distribution :meth:`sample` draws
        from with these settings: CFG-combined (null-caption rows with the conditional mask, as
        the sampler builds them), temperature, top-k, top-p (see ``sampling.sampler_logprobs``).
        Teacher forced in one pass over 2B rows when guided; no dropout."""
        check_sampling_args(self.vocab_size, temperature, top_k, top_p)
        cond, mask = self.prepare_caption(cond, cond_mask)
        B, T = mask.shape
        guided = cfg_scale != 1.0 and cfg_first_n != 0
        if guided:
            cond = torch.cat([cond, self.null_caption(T).to(cond).expand(B, -1, -1)])
            mask, rows = torch.cat([mask, mask]), torch.cat([tokens, tokens])
        else:
            rows = tokens
        logits = self.output(self._hidden(cond, mask, rows, stochastic=False))
        uncond = logits[B:] if guided else None
        return sampler_logprobs(logits[:B], uncond, tokens, cfg_scale, cfg_first_n, temperature,
                                top_k, top_p)

    # ------------------------------------------------------------------ sampling
    # The sampler's cache holds, per layer, keys/values (2, R, n_kv_head, 1 + L - 1, head_dim):
    # slot 0 summarises the whole caption, slot i holds image token i-1. The summary is exact:
    # caption keys are zero (zero RoPE rows), so an image query gives every valid caption key the
    # score 0, i.e. the caption block acts as ONE key with score log(#valid) and value
    # mean(valid caption values). That halves the attention traffic of a 120-token caption.
    def _run_cached(self, x, pos, cache, slot, mask) -> torch.Tensor:
        """x (R, n, dim) at positions pos.. through the layers, keys written at cache slot..;
        returns the logits of the last position."""
        cos, sin = (t[pos:pos + x.shape[1]] for t in self._rope_on(x.device))
        for layer, layer_cache in zip(self.layers, cache):
            x = layer(x, cos, sin, mask, layer_cache, slot)
        return self.output(self.norm(x[:, -1])).float()

    def _prefill(self, rows, keys_ok, cache) -> torch.Tensor:
        """Run the caption block, write the caption summaries to cache slot 0 and return the
        first logits (R, V).

        A row equal to the previous one (caption and mask) reuses its prefill: the G rollouts of
        a prompt (``repeat_interleave``) and the null-caption rows come in such runs.
        """
        R, T = keys_ok.shape
        same = torch.zeros(R, dtype=torch.bool, device=rows.device)
        same[1:] = (rows[1:] == rows[:-1]).flatten(1).all(1) & (keys_ok[1:] == keys_ok[:-1]).all(1)
        inverse = (~same).cumsum(0) - 1           # row -> index of its distinct run
        ok = keys_ok[~same]
        n_layer, _, _, n_kv_head, _, head_dim = cache.shape
        caption_cache = cache.new_empty(n_layer, 2, len(ok), n_kv_head, T, head_dim)
        logits = self._run_cached(self.cls_embedding(rows[~same]), 0, caption_cache, 0,
                                  self.attention_mask(ok, T))
        values = caption_cache[:, 1].float() * ok[:, None, :, None]    # (n_layer, U, H, T, D)
        mean = values.sum(-2) / ok.sum(-1).clamp(min=1)[:, None, None]
        cache[:, 0, :, :, 0] = 0
        cache[:, 1, :, :, 0] = mean[:, inverse].to(cache.dtype)
        return logits[inverse]

    def sample(self, cond: torch.Tensor, cond_mask: torch.Tensor, num_tokens: int | None = None,
               cfg_scale: float = 1.0, cfg_first_n: int | None = None, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
               seeds=None, return_topk_logits: int = 0,
               uniforms: torch.Tensor | None = None) -> SampleOutput:
        """Sample image tokens with a per-call KV cache (dropout never applies).

        Args:
            cond, cond_mask: caption embeddings (B, T, caption_dim), mask (B, T), left padded.
            num_tokens: tokens to draw (default block_size, the full grid).
            cfg_scale: classifier-free guidance; 1 runs the conditional rows only.
            cfg_first_n: apply CFG to the first N tokens only (scale 1 and no uncond rows after).
            temperature, top_k, top_p: applied to the CFG-combined logits in this order.
            generator: RNG for the draws; seeds: one int per row, giving each row its own stream
                (its tokens then do not depend on the rest of the batch). Neither: global RNG.
            uniforms: (B, L) uniforms in [0, 1) to draw with, instead of any RNG (rollouts take
                their rows of the global batch's uniforms under data parallelism).
            return_topk_logits: also return the k largest combined logits (and ids) per step.
        """
        with sampling_grad_mode(self):
            out = self._sample(cond, cond_mask, num_tokens, cfg_scale, cfg_first_n, temperature,
                               top_k, top_p, generator, seeds, return_topk_logits, uniforms)
        # clones leave inference mode, so the outputs can feed autograd (log_probs, losses)
        return SampleOutput(*(t.clone() if t is not None else None for t in out))

    def _sample(self, cond, cond_mask, num_tokens, cfg_scale, cfg_first_n, temperature, top_k,
                top_p, generator, seeds, return_topk_logits, uniforms=None):
        check_sampling_args(self.vocab_size, temperature, top_k, top_p)
        L = self.block_size if num_tokens is None else int(num_tokens)
        if not 1 <= L <= self.block_size:
            raise ValueError(f'num_tokens must be in [1, block_size={self.block_size}], got {L}')
        if not 0 <= return_topk_logits <= self.vocab_size:
            raise ValueError(f'return_topk_logits must be in [0, {self.vocab_size}], got '
                             f'{return_topk_logits}')
        cond, keys_ok = self.prepare_caption(cond, cond_mask)
        B, T = keys_ok.shape
        device = cond.device
        uniforms = draw_uniforms(B, L, seeds=seeds, generator=generator, device=device,
                                 uniforms=uniforms)
        cfg_steps = 0 if cfg_scale == 1.0 else (L if cfg_first_n is None else min(cfg_first_n, L))
        if cfg_steps:  # cond rows first, then null-caption rows with the conditional mask
            rows = torch.cat([cond, self.null_caption(T).to(cond).expand(B, -1, -1)])
            keys_ok = torch.cat([keys_ok, keys_ok])
        else:
            rows = cond
        R = rows.shape[0]
        p = self.layers[0].attention
        dtype = activation_dtype(self.tok_embeddings.weight.dtype, device)  # bf16 under autocast
        cache = torch.empty(len(self.layers), 2, R, p.n_kv_head, L, p.head_dim, dtype=dtype,
                            device=device)
        # additive score of the caption summary slot: log(#valid caption tokens)
        step_bias = torch.zeros(R, 1, 1, L, dtype=dtype, device=device)
        step_bias[:, 0, 0, 0] = keys_ok.sum(-1).to(dtype).log()

        tokens = torch.empty(B, L, dtype=torch.long, device=device)
        logprobs = torch.empty(B, L, dtype=torch.float32, device=device)
        k_top = return_topk_logits
        top_vals = torch.empty(B, L, k_top, device=device) if k_top else None
        top_ids = torch.empty(B, L, k_top, dtype=torch.long, device=device) if k_top else None

        logits = self._prefill(rows, keys_ok, cache)
        for i in range(L):
            if i:
                if i == cfg_steps and R > B:  # guidance over: drop the null-caption rows
                    R, cache, step_bias = B, cache[:, :, :B], step_bias[:B]
                x = self.tok_embeddings(tokens[:, i - 1].repeat(R // B))[:, None]
                logits = self._run_cached(x, T + i - 1, cache, i, step_bias[..., :i + 1])
            if R > B:
                logits = cfg_combine(logits[:B], logits[B:], cfg_scale)
            if k_top:
                top_vals[:, i], top_ids[:, i] = logits.topk(k_top, dim=-1)
            tokens[:, i], logprobs[:, i] = sample_from_logits(logits, uniforms[:, i], temperature,
                                                              top_k, top_p)
        return tokens, logprobs, top_vals, top_ids
