"""``tools/export_checkpoint.py``: a trained RankE model -> official-format LlamaGen / Janus files.

The policy goes out with any LoRA adapter merged into its weights (``W + scale * B @ A``), under
the official key names, so that the upstream code (and rankekit's own strict loaders) read it as
the original release's checkpoint; the tokenizer goes out with the chosen decoder (EMA by
default, the one RankE renders with) in place of the original one:

- LlamaGen: ``gpt.pt`` = ``{"model": GPT state_dict}`` and ``vq.pt`` = ``{"model": VQ state_dict}``
  (the layout of ``t2i_XL_stage1_256.pt`` / ``vq_ds16_t2i.pt``);
- Janus-Pro: ``model.safetensors`` with the generation path's keys (``language_model.*``,
  ``gen_aligner.*``, ``gen_head.*``, ``gen_embed.*``, ``gen_vision_model.*``), plus the config and
  tokenizer files of the source directory when the policy was loaded from one. The understanding
  path (``vision_model.*``, ``aligner.*``), which RankE never touches, is not copied.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from rankekit.apis.config import DictAction, run_reporting_errors

CHOICES = ('online', 'ema', 'base')
#: files of a Janus directory besides the weights (copied when the source is a directory)
JANUS_SIDE_FILES = ('config.json', 'tokenizer.json', 'tokenizer_config.json',
                    'special_tokens_map.json', 'processor_config.json',
                    'preprocessor_config.json')


def tokenizer_state(model, decoder: str = 'ema') -> dict:
    """The tokenizer's state_dict (official keys) with the ``decoder`` ('online' | 'ema' |
    'base') decoder and post_quant_conv in it."""
    if decoder not in CHOICES:
        raise ValueError(f'decoder must be one of {CHOICES}, got {decoder!r}')
    state = {k: v.detach().clone() for k, v in model.tokenizer.state_dict().items()}
    if decoder != 'online':
        parts = model.decoder_ema if decoder == 'ema' else model.decoder_base
        state.update({k: v.detach().clone() for k, v in parts.state_dict().items()})
    return state


def export_official(model, out_dir: str | Path, policy: str = 'online', decoder: str = 'ema',
                    policy_source: str | None = None) -> list[Path]:
    """Write ``model``'s policy and tokenizer as official-format files into ``out_dir``; returns
    the written paths. ``policy_source``: the Janus directory the policy was loaded from (its
    config and tokenizer files are copied along)."""
    from rankekit.policies import JanusProPolicy, LlamaGenGPT
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpt = model.export_policy_state(policy)
    vq = tokenizer_state(model, decoder)
    if isinstance(model.policy, LlamaGenGPT):
        paths = [out / 'gpt.pt', out / 'vq.pt']
        torch.save({'model': gpt}, paths[0])
        torch.save({'model': vq}, paths[1])
        return paths
    if isinstance(model.policy, JanusProPolicy):
        from safetensors.torch import save_file

        from rankekit.tokenizers.janus_vq import GEN_VISION_PREFIX
        state = dict(gpt)
        state.update({GEN_VISION_PREFIX + k: v for k, v in vq.items()})
        paths = [out / 'model.safetensors']
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[0]),
                  metadata={'format': 'pt'})
        source = Path(policy_source).expanduser() if policy_source else None
        if source is not None and source.is_dir():
            for name in JANUS_SIDE_FILES:
                if (source / name).is_file():
                    paths.append(Path(shutil.copy2(source / name, out / name)))
        return paths
    raise TypeError(f'no official format is known for a {type(model.policy).__name__} policy; '
                    f'export_policy_state() gives its weights')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/export_checkpoint.py',
        description='Export a trained RankE model as official-format LlamaGen / Janus files '
        '(LoRA adapters merged).')
    parser.add_argument('config', help='the config the model was trained with')
    parser.add_argument('checkpoint', help='a runner checkpoint (iter_N.pth) or work dir')
    parser.add_argument('--out-dir', required=True, help='folder for the exported files')
    parser.add_argument('--policy', choices=CHOICES, default='online',
                        help='online (trained, default), ema or base policy')
    parser.add_argument('--decoder', choices=CHOICES, default='ema',
                        help='ema (default: the decoder RankE renders with), online or base')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys (e.g. weight paths)')
    return parser.parse_args(argv)


def run_export(args: argparse.Namespace) -> list[Path]:
    from rankekit.apis.inference import load_model
    from rankekit.evaluation.generation import check_combos
    model, cfg, info = load_model(args.config, args.checkpoint, args.cfg_options)
    check_combos(model, [(args.policy, args.decoder)])
    paths = export_official(model, args.out_dir, args.policy, args.decoder,
                            cfg.model.policy.get('pretrained'))
    print(f'exported {info["path"]} (policy {args.policy}, decoder {args.decoder}): '
          + ', '.join(str(p) for p in paths))
    return paths


def export_main(argv=None) -> int:
    """``tools/export_checkpoint.py``; a bad config, option or file is one ``error:`` line."""
    args = parse_args(argv)
    return run_reporting_errors(lambda: run_export(args))


__all__ = ['export_official', 'tokenizer_state', 'export_main']
