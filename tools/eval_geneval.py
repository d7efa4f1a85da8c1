"""GenEval for a rankekit model: generate the images here, score them in GenEval's environment.

    # 1. images (553 prompts x 4) in GenEval's folder layout, with the model of a config
    python tools/eval_geneval.py generate configs/ranke/ranke_llamagen-xl_clip.py \\
        --checkpoint work_dirs/ranke_llamagen-xl_clip/iter_6000.pth --out work_dirs/geneval
    # 2. GenEval's detector (mmdet 2.x, its own environment) scores them; summary printed
    python tools/eval_geneval.py score work_dirs/geneval --geneval-repo data/eval/geneval \\
        --python ~/miniconda3/envs/geneval/bin/python --detector data/weights/geneval_detector

``generate`` reads the prompts from ``--metadata`` (default: the config's
``paper_eval.geneval.metadata``); ``score`` defaults ``--geneval-repo`` / ``--detector`` /
``--python`` from ``--config`` when given. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from rankekit.apis.config import DictAction
    parser = argparse.ArgumentParser(prog='tools/eval_geneval.py',
                                     description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    gen = sub.add_parser('generate', help='write GenEval images with a model')
    gen.add_argument('config', help='rankekit config of the model')
    gen.add_argument('--checkpoint', help='runner checkpoint (iter_N.pth) or work dir; default: '
                     "the config's pretrained weights only (the base model)")
    gen.add_argument('--metadata', help='GenEval prompts/evaluation_metadata.jsonl (default: '
                     'paper_eval.geneval.metadata of the config)')
    gen.add_argument('--out', required=True, help='output folder (GenEval layout)')
    gen.add_argument('--images-per-prompt', type=int, default=None, help='default: the '
                     "config's paper_eval.geneval.images_per_prompt (4)")
    gen.add_argument('--batch-size', type=int, default=None)
    gen.add_argument('--seed', type=int, default=None)
    gen.add_argument('--policy', choices=['online', 'ema', 'base'], default=None)
    gen.add_argument('--decoder', choices=['online', 'ema', 'base'], default=None)
    gen.add_argument('--device', default=None, help='default: cuda if available')
    gen.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    score = sub.add_parser('score', help="score a GenEval folder in GenEval's environment")
    score.add_argument('images', help='the folder written by `generate`')
    score.add_argument('--config', help='take repo / python / detector from paper_eval.geneval')
    score.add_argument('--geneval-repo', help='clone of djghosh13/geneval')
    score.add_argument('--python', help='python executable of the GenEval environment')
    score.add_argument('--detector', help='folder with the Mask2Former .pth '
                       '(evaluation/download_models.sh)')
    score.add_argument('--outfile', help='results jsonl (default: <images>/geneval_results.jsonl)')
    score.add_argument('--options', nargs='*', default=[], help='GenEval --options, k=v')
    score.add_argument('--json', help='also write the summary as JSON here')
    return parser.parse_args(argv)


def _geneval_cfg(config: str | None, cfg_options=None) -> dict:
    if not config:
        return {}
    from rankekit.apis.config import load_config
    cfg = load_config(config, cfg_options)
    return dict(cfg.get('paper_eval', {}).get('geneval', {}) or {})


def generate(args) -> int:
    import torch

    from rankekit.apis.config import load_config
    from rankekit.apis.inference import load_model
    from rankekit.evaluation.protocols import write_geneval_images
    cfg = load_config(args.config, args.cfg_options)
    paper = dict(cfg.get('paper_eval', {}) or {})
    geneval = dict(paper.get('geneval', {}) or {})
    sampling = dict(paper.get('sampling', {}) or {})
    for key in ('batch_size', 'seed', 'policy', 'decoder'):
        if getattr(args, key) is not None:
            sampling[key] = getattr(args, key)
    metadata = args.metadata or geneval.get('metadata')
    if not metadata:
        print('no GenEval prompts: pass --metadata prompts/evaluation_metadata.jsonl (from the '
              'GenEval repository)', file=sys.stderr)
        return 2
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model, _, _ = load_model(args.config, args.checkpoint, args.cfg_options, device)
    per_prompt = args.images_per_prompt or geneval.get('images_per_prompt', 4)
    out = write_geneval_images(model, metadata, args.out, images_per_prompt=per_prompt,
                               **sampling)
    print(f'GenEval images written to {out}; score them with: python tools/eval_geneval.py '
          f'score {out} --geneval-repo ... --python ... --detector ...')
    return 0


def score(args) -> int:
    from rankekit.evaluation.protocols import format_geneval_summary, run_geneval
    defaults = _geneval_cfg(args.config)
    repo = args.geneval_repo or defaults.get('repo')
    python = args.python or defaults.get('python')
    detector = args.detector or defaults.get('detector')
    missing = [flag for flag, value in (('--geneval-repo', repo), ('--python', python),
                                        ('--detector', detector)) if not value]
    if missing:
        print(f'missing {", ".join(missing)} (or give --config with paper_eval.geneval set); '
              'see docs/evaluation.md', file=sys.stderr)
        return 2
    bad = [opt for opt in args.options if '=' not in opt]
    if bad:
        print(f'--options takes key=value pairs, got {bad}', file=sys.stderr)
        return 2
    options = dict(opt.split('=', 1) for opt in args.options)
    summary = run_geneval(args.images, repo, python, detector, outfile=args.outfile,
                          options=options)
    print(format_geneval_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return generate(args) if args.command == 'generate' else score(args)


if __name__ == '__main__':
    sys.exit(main())
