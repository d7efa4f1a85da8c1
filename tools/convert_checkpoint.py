"""Convert a TRUSTED checkpoint into a file that rankekit's safe loading reads:

    python tools/convert_checkpoint.py OLD.pth NEW.pth
    python tools/convert_checkpoint.py --in-place work_dirs/run/iter_*.pth

rankekit reads every checkpoint weights-only (``--resume``, ``load_from``, ``tools/test.py``,
``tools/sample.py``, ``tools/export_checkpoint.py``, pretrained weights), so that a file cannot
run code when it is read. A file that needs full unpickling is refused with a line naming this
command: a runner checkpoint written before safe loading or by a plain MMEngine ``Runner`` (its
message hub's ``HistoryBuffer`` objects), or any file holding other Python objects.

**This tool is the only place in rankekit that calls torch.load with weights_only=False.**
Full unpickling runs whatever code the file names: convert only files you trust (your own
runs, a colleague's you vouch for), never a download you cannot vouch for.

What it does with each file: reads it in full; turns the message hub's HistoryBuffers into
tensors (the same values and dtypes, the form ``SafeRunner`` saves); stops, naming their keys,
at objects that have no safe form; writes the result (a ``.partial`` file renamed into place)
and checks that it loads weights-only. A file that already loads that way is left as it is.
"""
import argparse
import io
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from rankekit.apis.config import run_reporting_errors
from rankekit.utils.run_files import (PARTIAL_SUFFIX, fsync_path,
                                      load_runner_checkpoint_file, plain_history_buffers,
                                      remove_quietly)
from rankekit.utils.weights import UnsafeCheckpointError, safe_torch_load

#: what weights-only loading always reads: leaves, and containers to look into (exact types;
#: anything else is tried on its own, which copies it: cheap for the few odd objects of a file)
_PLAIN = (torch.Tensor, str, bytes, int, float, bool, complex, type(None))
_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def _loads_safely(path: Path) -> bool:
    """Whether ``path`` already loads weights-only; a truncated file is an error here."""
    try:  # memory-mapped: the pickle is read, the tensors are not
        load_runner_checkpoint_file(path, 'cpu', mmap=True)
    except UnsafeCheckpointError:
        return False
    return True


def _refused(obj) -> bool:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    try:
        safe_torch_load(buffer)
    except UnsafeCheckpointError:
        return True
    return False


def _unsafe_parts(obj, where: str = '<top level>'):
    """``'key/path (type)'`` for every object of ``obj`` that weights-only loading refuses."""
    if isinstance(obj, _PLAIN):
        return
    if type(obj) in _CONTAINERS:
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            yield from _unsafe_parts(value, key if where == '<top level>' else f'{where}/{key}')
    elif _refused(obj):
        yield f'{where} ({type(obj).__module__}.{type(obj).__qualname__})'


def convert(src: Path, dst: Path) -> str:
    """Convert the trusted file ``src`` to ``dst`` (may be ``src``); returns one report line."""
    if not src.is_file():
        raise FileNotFoundError(f'{src} does not exist (give a checkpoint file)')
    if _loads_safely(src):
        return f'{src} already loads weights-only; left as it is'
    # the one full unpickle of the code base: the user vouches for this file (module docstring)
    checkpoint = torch.load(src, map_location='cpu', weights_only=False)
    buffers = plain_history_buffers(checkpoint)
    unsafe = list(_unsafe_parts(checkpoint))
    if unsafe:
        more = f' (+{len(unsafe) - 8} more)' if len(unsafe) > 8 else ''
        raise ValueError(
            f'cannot convert {src}: {len(unsafe)} object(s) have no form that loads weights-only: '
            f'{"; ".join(unsafe[:8])}{more}. Save what you need from them as tensors, numbers, '
            f'strings, lists and dicts (e.g. a module\'s state_dict()); nothing was written')
    partial = Path(str(dst) + PARTIAL_SUFFIX)
    try:
        torch.save(checkpoint, partial)
        fsync_path(partial)
        load_runner_checkpoint_file(partial, 'cpu', mmap=True)  # proves that it reads safely
        os.replace(partial, dst)
    except BaseException:
        remove_quietly(partial)
        raise
    fsync_path(dst.parent)
    return (f'converted {src} -> {dst} ({buffers} HistoryBuffer(s) as tensors); it loads '
            f'weights-only now')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/convert_checkpoint.py',
        description='Convert a TRUSTED checkpoint that rankekit refuses (it needs full '
        'unpickling) into one that loads weights-only. This is the only place in rankekit '
        'that calls torch.load with weights_only=False: unpickling in full runs whatever code '
        'the file names, so convert only files you trust (your own runs), never a download you '
        'cannot vouch for.',
        epilog='examples: tools/convert_checkpoint.py old.pth new.pth; '
        'tools/convert_checkpoint.py --in-place work_dirs/run/iter_*.pth')
    parser.add_argument('paths', nargs='+', metavar='PATH',
                        help='SRC DST, or with --in-place one or more files to convert in place')
    parser.add_argument('--in-place', action='store_true',
                        help='replace each file by its converted form (atomically)')
    args = parser.parse_args(argv)
    if not args.in_place and len(args.paths) != 2:
        parser.error(f'give SRC and DST (got {len(args.paths)} path(s)), or --in-place with the '
                     f'files to convert')
    return args


def run(args: argparse.Namespace) -> None:
    if args.in_place:
        pairs = [(Path(p), Path(p)) for p in args.paths]
    else:
        src, dst = (Path(p) for p in args.paths)
        if dst.exists():
            raise ValueError(f'{dst} exists; give a new output path, or convert {src} with '
                                  f'--in-place')
        if not dst.parent.is_dir():
            raise FileNotFoundError(f'folder {dst.parent} for the output {dst} does not exist')
        pairs = [(src, dst)]
    for src, dst in pairs:
        print(convert(src, dst))


def main(argv=None) -> int:
    """A missing, refused or unconvertible file is one ``error:`` line and exit code 2."""
    args = parse_args(argv)
    return run_reporting_errors(lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
