"""Write toy-shapes images as PNGs + ``captions.jsonl`` (the image-folder + captions format).

Example: ``python tools/export_toy_dataset.py --split val --num 1000 --out data/toy_val``.
"""
import argparse
import sys

from rankekit.datasets.toy_shapes import SPLIT_IDS, ToyShapes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--split', default='train', choices=list(SPLIT_IDS))
    parser.add_argument('--num', type=int, default=None,
                        help='how many images (default: the whole split)')
    parser.add_argument('--out', required=True, help='output folder (created if missing)')
    parser.add_argument('--image-size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.num is not None and args.num < 1:
        print(f'--num must be >= 1, got {args.num}', file=sys.stderr)
        return 2
    dataset = ToyShapes(split=args.split, num_samples=args.num, image_size=args.image_size,
                        seed=args.seed)
    captions = dataset.write_folder(args.out, progress=not args.no_progress)
    print(f'wrote {len(dataset)} images and {captions}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
