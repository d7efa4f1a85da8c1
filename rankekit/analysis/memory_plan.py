"""Per-GPU memory of a RankE config, part by part, before anything is allocated.

Every part is counted from the config's own modules, built on the ``meta`` device (shapes and
dtypes, no storage, no weight files read), and the activations of the three phases of a RankE
step are found by *running* those phases on meta tensors under :class:`LiveTensorBytes`, which
follows every tensor an op allocates until autograd and Python let go of it. So the plan holds
whatever the code really keeps (saved activations, the log-softmax over the codebook, recomputed
blocks under activation checkpointing, adapter gradients under LoRA) without a formula per
architecture. What meta tensors cannot show is added as named terms:

- bf16 autocast keeps a bf16 copy of every matmul weight for the backward pass (2 bytes per
  weight of the policy's linear layers) while fp32 master weights, gradients and AdamW states
  stay (4 + 4 + 8 bytes per trained parameter);
- attention: on meta tensors PyTorch's SDPA falls back to its math kernel, which keeps every
  head's (S, S) probabilities; the plan runs the fused kernel real runs use instead (on CPU as
  on GPU: the output and one log-sum-exp per query and head, plus the mask as a bias);
- the rollout's KV cache (keys and values of every layer for every row, twice the rows with CFG);
- sharding (setting 'fsdp': FSDP2 ``fully_shard`` per block over ``world_size`` GPUs):
  weights, gradients, optimizer states and the reference / EMA copies divided by the world
  size, plus two gathered fp32 blocks (the one running and the next, prefetched). Autocast's
  bf16 copies are of the *gathered* weights, so they are not divided (what
  ``RankEDataParallel(shard_policy=True)`` does today: it gathers fp32 weights and autocasts).

Phases: ``rollout`` (sampling with the KV cache, decode, rewards), ``policy`` (teacher-forced
log-probs of the rollout, rank loss, backward) and ``decoder`` (decodes of real images and of the
selected rollouts, perceptual and GAN terms, backward). The peak is the largest phase.
"""
from __future__ import annotations

import copy
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GiB, MiB = 1024 ** 3, 1024 ** 2
#: name -> (precision, activation checkpointing, LoRA, policy sharded over the world size)
SETTINGS = {
    'fp32': ('fp32', False, False, False),
    'bf16': ('bf16', False, False, False),
    'bf16+ckpt': ('bf16', True, False, False),
    'lora': ('bf16', True, True, False),
    'fsdp': ('bf16', True, False, True),
}
PHASES = ('rollout', 'policy', 'decoder')
#: config keys naming weight files: dropped, the plan needs shapes only
_WEIGHT_KEYS = ('pretrained', 'backbone_weights')
#: google/flan-t5-xl's encoder (its public config.json), used when the T5 folder is absent
FLAN_T5_XL = dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24,
                  vocab_size=32128, feed_forward_proj='gated-gelu')


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages allocated inside the mode and still alive; ``peak`` is the
    most at any time. Storages that existed before (weights, inputs) are not counted, nor are
    views of them. Works on ``meta`` tensors as on real ones."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, int] = {}    # storage -> live tensors viewing it
        self._bytes: dict[int, int] = {}

    def _drop(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._bytes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key not in self._refs:
                if key in inputs:  # an in-place result or a view of something made outside
                    continue
                self._refs[key], self._bytes[key] = 0, t.untyped_storage().nbytes()
                self.live += self._bytes[key]
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._drop, key)
        return out


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors``."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return sum(seen.values())


def param_bytes(module: nn.Module | None, dtype_bytes: int | None = None,
                trainable_only: bool = False) -> int:
    """Bytes of a module's parameters (in their dtype, or ``dtype_bytes`` each)."""
    if module is None:
        return 0
    params = [p for p in module.parameters() if p.requires_grad or not trainable_only]
    return sum(p.numel() * (dtype_bytes or p.element_size()) for p in params)


@dataclass
class Part:
    name: str
    bytes: int
    phases: tuple[str, ...] = PHASES  # the phases it is alive in
    note: str = ''


@dataclass
class MemoryPlan:
    config: str
    setting: str
    world_size: int
    rows: int                      # rollouts per GPU and step (prompts x G)
    parts: list[Part] = field(default_factory=list)

    def add(self, name: str, nbytes: float, phases=PHASES, note: str = '') -> None:
        self.parts.append(Part(name, int(nbytes), tuple(phases), note))

    def phase_bytes(self, phase: str) -> int:
        return sum(p.bytes for p in self.parts if phase in p.phases)

    @property
    def peak(self) -> tuple[str, int]:
        """(phase, bytes) of the largest phase."""
        return max(((ph, self.phase_bytes(ph)) for ph in PHASES), key=lambda x: x[1])


# ------------------------------------------------------------------------- building on meta
#: what a component needs to build without its weight files (the weights' shapes are the same)
_ARCHITECTURE_ONLY = {'LPIPSLoss': dict(random_backbone=True)}


def _strip_weights(cfg):
    """A copy of a component config with weight-file keys set to None."""
    if isinstance(cfg, dict):
        out = {k: (None if k in _WEIGHT_KEYS else _strip_weights(v)) for k, v in cfg.items()}
        return {**out, **_ARCHITECTURE_ONLY.get(out.get('type'), {})}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_strip_weights(v) for v in cfg)
    return cfg


def build_on_meta(registry, cfg: dict, where: str) -> nn.Module:
    """``registry.build(cfg)`` with weight files dropped, every tensor on the meta device."""
    import warnings
    from rankekit.utils.build import build_module
    with torch.device('meta'), warnings.catch_warnings():
        # random-trunk and meta-copy warnings: expected here, the plan reads shapes only
        warnings.simplefilter('ignore', UserWarning)
        module = build_module(registry, _strip_weights(dict(cfg)), where)
    return module.to('meta')  # tensors made with an explicit CPU device (lpips' buffers)


def _text_encoder_on_meta(cfg: dict) -> tuple[nn.Module, str]:
    from rankekit.registry import TEXT_ENCODERS
    if cfg.get('type') == 'T5TextEncoder' and not (Path(str(cfg.get('model_dir', ''))) /
                                                    'config.json').is_file():
        from transformers import T5Config, T5EncoderModel
        dtype = torch.bfloat16 if cfg.get('dtype', 'bf16') == 'bf16' else torch.float32
        with torch.device('meta'):
            encoder = T5EncoderModel(T5Config(**FLAN_T5_XL)).to(dtype)
        return encoder, f"flan-t5-xl encoder (its folder {cfg.get('model_dir')} is absent)"
    if cfg.get('type') == 'JanusPromptEncoder':  # a tokenizer: the embeddings are the policy's
        return nn.Module(), 'prompt token ids: no weights of its own'
    return build_on_meta(TEXT_ENCODERS, cfg, 'model.text_encoder'), ''


# ------------------------------------------------------------------------- the phases on meta
def _policy_inputs(policy: nn.Module, rows: int, prompt_tokens: int):
    """Teacher-forcing inputs of ``rows`` rollouts on the policy's device, and the sequence
    length. One row is left-padded: the attention mask then is a (B, 1, S, S) tensor, as in
    real batches of prompts of different lengths."""
    device = next(policy.parameters()).device
    L = int(policy.num_image_tokens)
    tokens = torch.zeros(rows, L, dtype=torch.long, device=device)
    if hasattr(policy, 'caption_dim'):  # LlamaGen: caption embeddings
        T = int(policy.cls_token_num)
        cond = torch.zeros(rows, T, policy.caption_dim, device=device)
    else:  # Janus-Pro: prompt token ids (BOS ... <begin_of_image>, all valid)
        T = prompt_tokens
        cond = torch.zeros(rows, T, dtype=torch.long, device=device)
        if policy.image_start_token_id is not None:
            cond[:, -1] = policy.image_start_token_id
    mask = torch.ones(rows, T, dtype=torch.long, device=device)
    if T > 2:  # prompts of a batch differ in length: one left-padded row, as in real batches
        mask[0, 0] = 0
    return cond, mask, tokens, T + L


_SDPA = F.scaled_dot_product_attention


def _fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    """SDPA as the fused CPU kernel runs it (the math fallback is what meta tensors get)."""
    if not q.is_meta or q.dim() != 4:  # the fused CPU kernel takes (B, H, S, D) only
        return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, enable_gqa=enable_gqa)
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: the kernel takes equal heads
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, -3), v.repeat_interleave(repeat, -3)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # as SDPA converts it
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~attn_mask, float('-inf'))
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


@contextmanager
def fused_attention_on_meta():
    """Within the context, SDPA on meta tensors keeps what the fused kernels keep."""
    F.scaled_dot_product_attention = _fused_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def policy_phase_bytes(policy: nn.Module, rows: int, prompt_tokens: int,
                       checkpointing: bool) -> tuple[int, int]:
    """(activations + workspace, gradients) of the teacher-forced log-probs, loss and backward of
    ``rows`` rollouts in the policy's own dtype, on its device (meta for plans)."""
    from rankekit.utils.memory import recompute_in_backward
    with torch.no_grad(), fused_attention_on_meta():  # lazily placed tables (RoPE) in place,
        policy.log_probs(*_policy_inputs(policy, 1, prompt_tokens)[:3])  # as after a 1st step
    cond, mask, tokens, _ = _policy_inputs(policy, rows, prompt_tokens)
    grads_before = {id(p) for p in policy.parameters() if p.grad is not None}
    with LiveTensorBytes() as live, torch.enable_grad(), fused_attention_on_meta(), \
            recompute_in_backward(getattr(policy, 'blocks', ()), checkpointing):
        logp = policy.log_probs(cond, mask, tokens)
        logp.mean().backward()
        grads = tensor_bytes(p.grad for p in policy.parameters()
                             if p.grad is not None and id(p) not in grads_before)
        peak = live.peak
    for p in policy.parameters():
        p.grad = None
    return peak - grads, grads


def decoder_phase_bytes(tokenizer, discriminator, perceptual, n_real: int, n_policy: int,
                        image_size: int, checkpointing: bool = False) -> int:
    """Activations of one decoder step on meta: decodes of ``n_real`` real images and
    ``n_policy`` selected rollouts with gradients, perceptual and GAN terms, backward."""
    grid = int(tokenizer.grid_size)
    codes = torch.zeros(n_real + n_policy, grid * grid, dtype=torch.long, device='meta')
    dtype = next(tokenizer.decoder_parameters()).dtype
    real = torch.zeros(n_real, 3, image_size, image_size, device='meta', dtype=dtype)
    from rankekit.utils.memory import recompute_in_backward
    parts = tokenizer.decoder_modules()
    with LiveTensorBytes() as live, torch.enable_grad(), fused_attention_on_meta(), \
            recompute_in_backward(getattr(parts['decoder'], 'blocks', ()), checkpointing):
        quant = tokenizer.quantize.get_codebook_entry(
            codes.reshape(-1), (len(codes), tokenizer.codebook_embed_dim, grid, grid), True)
        images = parts['decoder'](parts['post_quant_conv'](quant))
        loss = (images[:n_real] - real).abs().mean()
        if perceptual is not None:
            loss = loss + perceptual(images[:n_real], real).mean() \
                + perceptual(images[n_real:], images[n_real:].detach()).mean()
        if discriminator is not None:
            loss = loss - discriminator(images).mean()
        loss.backward()
        peak = live.peak
    for module in (tokenizer, discriminator):
        for p in (module.parameters() if module is not None else ()):
            p.grad = None
    return peak - param_bytes(tokenizer, trainable_only=True) - \
        param_bytes(discriminator, trainable_only=True)


def kv_cache_bytes(policy: nn.Module, rows: int, seq_len: int, cfg: bool,
                   act_bytes: int) -> int:
    """Keys and values of every layer for every sampled row (CFG doubles the rows)."""
    width = 0
    for block in policy.blocks:
        attn = getattr(block, 'attention', None) or getattr(block, 'self_attn')
        width += 2 * (attn.kv_dim if hasattr(attn, 'kv_dim') else attn.k_proj.out_features)
    return width * rows * (2 if cfg else 1) * seq_len * act_bytes


def _linear_weight_numel(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


# ------------------------------------------------------------------------- the plan
def plan_memory(cfg, setting: str = 'fp32', world_size: int = 8, prompt_tokens: int = 64,
                config_name: str = '') -> MemoryPlan:
    """The per-GPU memory plan of a RankE config (an mmengine Config or its dict).

    ``setting``: a key of :data:`SETTINGS`; ``world_size``: the GPUs the 'fsdp' setting shards
    the policy, its reference and EMA copies over (FSDP2, one unit per block);
    ``prompt_tokens``: the prompt length of token-id policies (Janus-Pro).
    """
    from rankekit.models.lora import add_lora
    from rankekit.models.settings import settings_from_config
    from rankekit.registry import LOSSES, MODELS, POLICIES, REWARDS, TOKENIZERS
    import rankekit  # noqa: F401  (registers the components)
    if setting not in SETTINGS:
        raise ValueError(f'setting must be one of {sorted(SETTINGS)}, got {setting!r}')
    if world_size < 1:
        raise ValueError(f'world_size must be >= 1, got {world_size}')
    precision, checkpointing, lora, sharded = SETTINGS[setting]
    world_size = world_size if sharded else 1
    model_cfg = dict(cfg['model'])
    if model_cfg.get('type') != 'RankEModel':
        raise ValueError(f"plan_memory plans RankEModel configs; model.type is "
                         f"{model_cfg.get('type')!r}")
    settings = settings_from_config(model_cfg)
    rollout, policy_cfg = settings['rollout'], settings['policy_cfg']
    decoder_cfg = settings['decoder_cfg']
    prompts = int(cfg['train_dataloader']['batch_size'])
    rows = prompts * int(rollout.group_size)
    act_bytes = 2 if precision == 'bf16' else 4
    shard = 1 / world_size
    plan = MemoryPlan(config_name, setting + (f' x{world_size}' if sharded else ''),
                      world_size, rows)

    # -- the policy and its copies
    try:
        policy = build_on_meta(POLICIES, model_cfg['policy'], 'model.policy')
    except ValueError as exc:
        if 'arch' not in str(exc):
            raise
        raise ValueError(f'{exc}. The memory plan reads no weight files: name the architecture, '
                         f"e.g. --cfg-options model.policy.arch=Janus-Pro-1B (presets: the "
                         f"policy class's ARCH_SETTINGS)") from None
    if lora:
        add_lora(policy, model_cfg.get('lora'))
    n_params = sum(p.numel() for p in policy.parameters())
    n_trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    plan.add('policy weights (fp32 master)', 4 * n_params * shard)
    plan.add('policy gradients (fp32)', 4 * n_trained * shard, ('policy',))
    plan.add('policy AdamW states', 8 * n_trained * shard)
    if lora:
        plan.add('policy reference copy', 0, note='the adapter switched off: no copy')
    else:
        plan.add('policy reference copy', 4 * n_params * shard)
    if policy_cfg.ema_decay is not None:
        plan.add('policy EMA copy', 4 * (n_trained if lora else n_params) * shard,
                 note='adapter weights only' if lora else '')
    if sharded:
        block = max(sum(p.numel() for p in b.parameters()) for b in policy.blocks)
        plan.add('gathered blocks (FSDP, 2 in flight)', 2 * block * 4,
                 ('rollout', 'policy'))

    # -- the policy phase: measured on meta in the activation dtype
    if precision == 'bf16':
        # activations in bf16 as autocast makes them; trained LoRA adapters stay fp32, as they
        # are (peft then casts each adapted layer's input to fp32: copies a real run keeps too)
        for param in policy.parameters():
            if not (lora and param.requires_grad):
                param.data = param.data.to(torch.bfloat16)
        # autocast keeps the bf16 copy of each weight it casts until the forward ends; under
        # FSDP it casts the gathered weights, so this part is not sharded
        # (only with gradients on: the rollout's no-grad casts are freed op by op)
        plan.add('bf16 weight casts (autocast)', 2 * _linear_weight_numel(policy), ('policy',))
    acts, _ = policy_phase_bytes(policy, rows, prompt_tokens, checkpointing)
    _, _, _, seq_len = _policy_inputs(policy, 1, prompt_tokens)
    plan.add('policy activations (teacher-forced)', acts, ('policy',),
             'block inputs + one recomputed block' if checkpointing else 'saved for backward')
    plan.add('KV cache (rollout)',
             kv_cache_bytes(policy, rows, seq_len, float(rollout.cfg_scale) != 1.0,
                            act_bytes), ('rollout',))
    vocab = int(policy.vocab_size)
    plan.add('sampler logits (rollout)', rows * 2 * vocab * 4 * 3, ('rollout',),
             'CFG rows, fp32 logits, probabilities, sort')
    del policy

    # -- the tokenizer: frozen encoder + codebook, trained decoder with its base and EMA copies
    tokenizer = build_on_meta(TOKENIZERS, model_cfg['tokenizer'], 'model.tokenizer')
    tokenizer.freeze_encoder()
    decoder = nn.ModuleDict(tokenizer.decoder_modules())
    dec = param_bytes(decoder, 4)
    plan.add('VQ encoder + codebook (frozen)', param_bytes(tokenizer, 4) - dec)
    plan.add('VQ decoder weights', dec)
    plan.add('VQ decoder gradients', dec, ('decoder',))
    plan.add('VQ decoder AdamW states', 2 * dec)
    plan.add('VQ decoder base + EMA copies', 2 * dec)
    disc = perceptual = None
    if model_cfg.get('discriminator'):
        disc = build_on_meta(MODELS, model_cfg['discriminator'], 'model.discriminator')
        d = param_bytes(disc, 4)
        plan.add('discriminator weights + AdamW', 3 * d)
        plan.add('discriminator gradients', d, ('decoder',))
    if model_cfg.get('perceptual_loss'):
        perceptual = build_on_meta(LOSSES, model_cfg['perceptual_loss'], 'model.perceptual_loss')
        perceptual.requires_grad_(False)
        plan.add('perceptual network (frozen)', param_bytes(perceptual))

    # -- frozen text encoder and rewards
    text_encoder, note = _text_encoder_on_meta(dict(model_cfg['text_encoder']))
    plan.add('text encoder (frozen)', param_bytes(text_encoder), note=note)
    del text_encoder
    rewards = model_cfg.get('rewards') or []
    for i, reward_cfg in enumerate(rewards if isinstance(rewards, (list, tuple)) else [rewards]):
        reward = build_on_meta(REWARDS, reward_cfg, f'model.rewards[{i}]')
        name = getattr(reward, 'name', None) or reward_cfg.get('type')
        plan.add(f'reward {name} (frozen)', param_bytes(reward))

    # -- the decoder phase: measured on meta
    top_k = int(dict(model_cfg.get('rank_weights') or {}).get('top_k', 1))
    n_policy = prompts * min(top_k, int(rollout.group_size)) \
        if decoder_cfg.policy_decode == 'selected' else rows
    image_size = int(tokenizer.grid_size * tokenizer.downsample_factor)
    if precision == 'bf16':
        for module in (tokenizer, disc, perceptual):
            if module is not None:
                module.to(torch.bfloat16)
    plan.add('decoder-phase activations',
             decoder_phase_bytes(tokenizer, disc, perceptual, prompts, n_policy, image_size,
                                 checkpointing),
             ('decoder',), f'{prompts} real + {n_policy} selected decodes')
    plan.add('rollout images', rows * 3 * image_size ** 2 * 4, ('rollout', 'policy', 'decoder'))
    return plan



# ------------------------------------------------------------------------- measuring (CPU)
def apply_setting(cfg, setting: str) -> None:
    """Set ``model.precision``, activation checkpointing and LoRA of a config for ``setting``."""
    precision, checkpointing, lora, sharded = SETTINGS[setting]
    if sharded:
        raise ValueError(f'setting {setting!r} shards the policy over several processes; '
                         f'a single-process measurement cannot run it')
    cfg.model.precision = precision
    for key in ('policy_cfg', 'decoder_cfg'):
        cfg.model.setdefault(key, {})
        cfg.model[key]['grad_checkpointing'] = checkpointing
    if lora and not cfg.model.get('lora'):
        cfg.model.lora = dict(r=16, alpha=32)


def measure_train_step(cfg, setting: str = 'fp32', work_dir: str | None = None) -> dict:
    """Measured tensor memory of one RankE step on this machine's CPU, in bytes: ``static``
    (weights, buffers, copies and optimizer states after a warm-up step) and ``peak`` (static +
    the most live tensor bytes during the measured step, by :class:`LiveTensorBytes`).

    The config's model, data and optimizers are built as ``tools/train.py`` builds them; the
    warm-up step creates the AdamW states, and the decoder-step counter is set past
    ``disc_start`` so that the measured step has its GAN terms, as the plan does.
    """
    import tempfile
    import uuid
    from rankekit.apis.train import build_runner
    cfg = copy.deepcopy(cfg)
    apply_setting(cfg, setting)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.work_dir = work_dir or tmp
        cfg.log_level = 'WARNING'
        if cfg.get('visualizer'):  # mmengine keeps visualizers by name: one per measurement
            cfg.visualizer.name = f'memory_plan_{uuid.uuid4().hex[:8]}'
        runner = build_runner(cfg)
        model = runner.model
        optim = runner.build_optim_wrapper(cfg.optim_wrapper)
        batches = iter(runner.build_dataloader(cfg.train_dataloader))
        model.train()
        model.train_step(next(batches), optim)
        model.decoder_steps.fill_(max(int(model.decoder_steps),
                                      int(model.decoder_cfg.disc_start)))
        batch = next(batches)
        state = list(model.parameters()) + list(model.buffers())
        for wrapper in optim.values():
            for per_param in wrapper.optimizer.state.values():
                state += [t for t in per_param.values() if isinstance(t, torch.Tensor)]
        static = tensor_bytes(state)
        with LiveTensorBytes() as live:
            model.train_step(batch, optim)
        return dict(static=static, peak=static + live.peak)


__all__ = ['SETTINGS', 'PHASES', 'LiveTensorBytes', 'MemoryPlan', 'Part', 'plan_memory',
           'policy_phase_bytes', 'decoder_phase_bytes', 'kv_cache_bytes', 'build_on_meta',
           'param_bytes', 'tensor_bytes', 'apply_setting', 'measure_train_step',
           'fused_attention_on_meta']
