"""Per-GPU memory of a RankE config, part by part, for fp32 / bf16 / activation checkpointing /
LoRA / FSDP, before you rent the GPUs.

    python tools/plan_memory.py configs/ranke/ranke_llamagen-xl_clip.py
    python tools/plan_memory.py configs/ranke/ranke_janus-pro-1b_clip.py \\
        --cfg-options model.policy.arch=Janus-Pro-1B        # no directory here: the preset
    python tools/plan_memory.py configs/ablation/anchor_ema.py --unit MiB --measure

Nothing is downloaded or loaded: every module is built on the meta device from the config (see
rankekit/analysis/memory_plan.py for what is counted and how). ``--measure`` also runs one real
RankE step per setting on this machine's CPU and prints its measured tensor peak beside the
plan (toy-sized configs). ``--markdown`` prints the table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys

from rankekit.apis.config import DictAction, load_config, run_reporting_errors


def parse_args(argv=None) -> argparse.Namespace:
    from rankekit.analysis.memory_plan import SETTINGS
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a RankE config (configs/ranke/*.py, configs/ablation/*.py)')
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS),
                        help="memory settings to plan (default: all). lora = bf16 + checkpointing "
                             "+ LoRA; fsdp = bf16 + checkpointing, sharded over --world-size")
    parser.add_argument('--world-size', type=int, default=8,
                        help='GPUs the fsdp setting shards over (default 8)')
    parser.add_argument('--prompt-tokens', type=int, default=64,
                        help='prompt length of token-id policies (Janus-Pro; default 64)')
    parser.add_argument('--unit', choices=('GiB', 'MiB'), default='GiB')
    parser.add_argument('--gpu-gib', type=float, default=80.0,
                        help='GPU memory the peak is compared with (default 80)')
    parser.add_argument('--measure', action='store_true',
                        help='also measure one real step per setting on this CPU (small configs)')
    parser.add_argument('--markdown', action='store_true', help='print a markdown table')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config keys, as in tools/train.py')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        from rankekit.analysis.memory_plan import (GiB, MiB, PHASES, measure_train_step,
                                                   plan_memory)
        cfg = load_config(args.config, args.cfg_options)
        plans = [plan_memory(cfg, s, world_size=args.world_size,
                             prompt_tokens=args.prompt_tokens, config_name=args.config)
                 for s in args.settings]
        scale = GiB if args.unit == 'GiB' else MiB
        measured = {}
        if args.measure:
            for s in args.settings:
                if s != 'fsdp':
                    measured[s] = measure_train_step(cfg, s)['peak']
        header = ['part'] + [p.setting for p in plans]
        rows = []
        for i, part in enumerate(plans[0].parts):
            names = [next((q for q in p.parts if q.name == part.name), None) for p in plans]
            rows.append([part.name] + [f'{q.bytes / scale:.2f}' if q else '–' for q in names])
        # parts that only some settings have (gathered blocks, weight casts)
        for p in plans[1:]:
            for part in p.parts:
                if part.name not in {r[0] for r in rows}:
                    rows.append([part.name] + [
                        next((f'{q.bytes / scale:.2f}' for q in o.parts if q.name == part.name),
                             '–') for o in plans])
        for phase in PHASES:
            rows.append([f'**{phase} phase**' if args.markdown else f'{phase} phase']
                        + [f'{p.phase_bytes(phase) / scale:.1f}' for p in plans])
        rows.append(['**peak**' if args.markdown else 'peak'] + [
            f'{p.peak[1] / scale:.1f} ({p.peak[0]})' for p in plans])
        if measured:
            rows.append(['measured peak (this CPU)'] + [
                f'{measured[p.setting] / scale:.1f}' if p.setting in measured else '–'
                for p in plans])
        if args.markdown:
            print('| ' + ' | '.join(header) + ' |')
            print('|' + '---|' + '---:|' * len(plans))
            for row in rows:
                print('| ' + ' | '.join(row) + ' |')
        else:
            from rich.console import Console
            from rich.table import Table
            table = Table(title=f'{args.config}: memory per GPU ({args.unit}), '
                                f'{plans[0].rows} rollouts per GPU and step')
            table.add_column('part', no_wrap=True)
            for p in plans:
                table.add_column(p.setting, justify='right')
            for row in rows:
                table.add_row(*row)
            Console(width=max(Console().width, 48 + 16 * len(plans))).print(table)
        for p in plans:
            if p.peak[1] > args.gpu_gib * GiB:
                print(f'{p.setting}: the peak ({p.peak[1] / GiB:.1f} GiB, {p.peak[0]} phase) '
                      f'does not fit {args.gpu_gib:g} GiB')
        return 0
    return run_reporting_errors(body)


if __name__ == '__main__':
    sys.exit(main())
