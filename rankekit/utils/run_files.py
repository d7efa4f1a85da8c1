"""The runner's own checkpoint files: safe loading, atomic writes, what to resume from.

Runner checkpoints (``--resume``, ``load_from``, ``tools/test.py``, ``tools/sample.py``,
``tools/export_checkpoint.py``) are read like any other file: ``weights_only=True`` through
:func:`rankekit.utils.weights.safe_torch_load`, so a checkpoint from a hub or a colleague cannot
run code. :func:`register_runner_checkpoint_loader` makes MMEngine's ``CheckpointLoader`` (and so
``Runner.resume`` / ``load_checkpoint``) read local files that way. MMEngine's message hub keeps
its logged scalars in ``HistoryBuffer`` objects, whose pickle calls ``getattr`` (it carries the
class's statistics methods) and cannot be allow-listed safely: :func:`plain_history_buffers`
turns them into dicts of tensors when ``SafeRunner`` saves, :func:`restore_history_buffers`
turns them back when a checkpoint is read, value for value.

The files are written atomically (:func:`write_bytes_atomic`, ``.partial`` files renamed into
place); :func:`checkpoint_problem` tells a complete file from a truncated one without loading it
and :func:`find_resume_checkpoint` picks what ``--resume auto`` continues (see
:mod:`rankekit.engine.runner`).
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from rankekit.utils.weights import UnsafeCheckpointError, WeightsFileError, safe_torch_load

#: what a saved HistoryBuffer becomes: ``{HISTORY_BUFFER: 1, 'log_history': tensor, ...}``
HISTORY_BUFFER = 'mmengine.HistoryBuffer'


def _log_scalars(checkpoint) -> dict | None:
    hub = checkpoint.get('message_hub') if isinstance(checkpoint, dict) else None
    scalars = hub.get('log_scalars') if isinstance(hub, dict) else None
    return scalars if isinstance(scalars, dict) else None


def plain_history_buffers(checkpoint: dict) -> int:
    """Replace the message hub's ``HistoryBuffer`` objects of ``checkpoint`` (in place) with
    plain dicts of tensors that ``weights_only`` loading reads; returns how many.

    The numpy histories become tensors of the same dtype (exact). A buffer whose history is not
    numeric (no tensor form) is left as it is; the save then warns that the file needs converting.
    """
    from mmengine.logging import HistoryBuffer
    scalars, done = _log_scalars(checkpoint) or {}, 0
    for key, buffer in scalars.items():
        if not isinstance(buffer, HistoryBuffer):
            continue
        try:
            logs, counts = (torch.from_numpy(history.copy()) for history in buffer.data)
        except TypeError:  # an object-dtype history: nothing safe to turn it into
            continue
        scalars[key] = {HISTORY_BUFFER: 1, 'log_history': logs, 'count_history': counts,
                        'max_length': buffer.max_length}
        done += 1
    return done


def restore_history_buffers(checkpoint):
    """Undo :func:`plain_history_buffers` (in place), so that MMEngine's ``MessageHub`` resumes
    its logged scalars as it would from a full pickle; returns ``checkpoint``."""
    from mmengine.logging import HistoryBuffer
    scalars = _log_scalars(checkpoint) or {}
    for key, value in scalars.items():
        if isinstance(value, dict) and value.get(HISTORY_BUFFER) == 1:
            # the constructor copies the arrays (np.array), keeping their dtypes
            scalars[key] = HistoryBuffer(value['log_history'].numpy(),
                                         value['count_history'].numpy(), value['max_length'])
    return checkpoint


def load_runner_checkpoint_file(filename: str | os.PathLike, map_location=None,
                                mmap: bool = False):
    """Read a runner checkpoint without running code from it (``weights_only=True``).

    Raises :class:`~rankekit.utils.weights.UnsafeCheckpointError` (one line, with the conversion
    command) for a file that needs full unpickling, and a one-line
    :class:`~rankekit.utils.weights.WeightsFileError` for a truncated or corrupt one.
    """
    path = Path(filename).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:  # torch memory-maps only its zip format; an old (pre-1.6) file is read as a whole
        checkpoint = safe_torch_load(path, what='checkpoint', map_location=map_location,
                                     mmap=mmap and zipfile.is_zipfile(path))
    except (EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise WeightsFileError(
            f'checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc}); '
            f'use an earlier checkpoint (--resume PATH) or --resume auto, which skips '
            f'incomplete files') from exc
    return restore_history_buffers(checkpoint)


def unsafe_checkpoint_problem(path: str | os.PathLike) -> str | None:
    """The refusal message safe loading would give ``path``, or None when it loads safely.

    Memory-mapped: only the pickled objects are read, not the tensors.
    """
    try:
        load_runner_checkpoint_file(path, map_location='cpu', mmap=True)
    except UnsafeCheckpointError as exc:
        return str(exc)
    return None


_RUNNER_LOADER_REGISTERED = False


def register_runner_checkpoint_loader() -> None:
    """Make MMEngine's ``CheckpointLoader`` read local files with
    :func:`load_runner_checkpoint_file` (weights only, HistoryBuffers restored)."""
    global _RUNNER_LOADER_REGISTERED
    if _RUNNER_LOADER_REGISTERED:
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_from_local(filename, map_location):  # noqa: D401 - MMEngine's signature
        return load_runner_checkpoint_file(filename, map_location)

    _RUNNER_LOADER_REGISTERED = True


# ------------------------------------------------------------------------------------------------
# the runner's own checkpoint files: atomic writes, completeness, which one to resume from
# ------------------------------------------------------------------------------------------------
#: suffix of a file being written; it is renamed to its final name only once complete
PARTIAL_SUFFIX = '.partial'
#: MMEngine's pointer file, in the work dir, naming the newest checkpoint
POINTER_NAME = 'last_checkpoint'
_NUMBERED = re.compile(r'(?:iter|epoch)_(\d+)\.pth')


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) data to disk: after a rename, fsync the folder too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` so that readers see the old content or the new one, never a part.

    The bytes go to ``<path>.partial`` in the same folder, are fsynced, then ``os.replace``d
    onto ``path`` (atomic on POSIX and Windows within one file system).
    """
    path = os.fspath(path)
    partial = path + PARTIAL_SUFFIX
    try:
        with open(partial, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        remove_quietly(partial)
        raise
    fsync_path(os.path.dirname(os.path.abspath(path)))


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.partial`` files a killed save left in ``folder``; returns them."""
    folder = Path(folder)
    stale = sorted(folder.glob('*' + PARTIAL_SUFFIX)) if folder.is_dir() else []
    for path in stale:
        remove_quietly(path)
    return stale


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint file, or None when it is.

    Cheap: only the zip directory at the end of the file is read (``torch.save`` writes a zip
    container whose directory comes last, so a truncated file has none). Tensors are not read.
    """
    path = Path(path)
    if not path.is_file():
        return 'does not exist'
    size = path.stat().st_size
    if size == 0:
        return 'is empty'
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f'is truncated or corrupt ({size} bytes, no complete zip directory: {exc})'
    if not any(name == 'data.pkl' or name.endswith('/data.pkl') for name in names):
        return 'is not a torch checkpoint (no data.pkl in the archive)'
    return None


def numbered_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ``iter_N.pth`` / ``epoch_N.pth`` files of ``folder``, newest (largest N) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _NUMBERED.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


class NoCompleteCheckpointError(WeightsFileError):
    """``--resume auto`` found checkpoints, but none of them is complete."""


def find_resume_checkpoint(work_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """The newest complete checkpoint of a work dir, for ``--resume auto``: ``(path, note)``.

    The ``last_checkpoint`` pointer's target is taken when it is complete. Otherwise (pointer
    missing, empty, or naming a missing/truncated file) the newest ``iter_N.pth`` that is
    complete is taken and ``note`` says which and why, in one line for the log. ``(None, None)``
    when the work dir holds no checkpoint at all (a fresh start). Raises
    :class:`NoCompleteCheckpointError` when checkpoints exist but none is complete.
    """
    work_dir = Path(work_dir)
    pointer = work_dir / POINTER_NAME
    folders, reason = [work_dir], None
    if pointer.is_file():
        text = pointer.read_text(errors='replace').strip()
        if not text:
            reason = f'{pointer} is empty (a save was interrupted)'
        else:
            target = Path(text)
            # MMEngine writes the path as given (maybe relative to the launch folder)
            options = [target] if target.is_absolute() else [target, work_dir / target.name]
            found = next((p for p in options if p.is_file()), None)
            if found is None:
                reason = f'{pointer} names {text}, which does not exist'
            else:
                problem = checkpoint_problem(found)
                if problem is None:
                    return str(found), None
                reason = f'{pointer} names {found}, which {problem}'
                folders.insert(0, found.parent)  # a CheckpointHook out_dir besides the work dir
    else:
        reason = f'{work_dir} has no {POINTER_NAME} pointer'
    candidates, seen = [], set()
    for folder in folders:
        for path in numbered_checkpoints(folder):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                candidates.append(path)
    candidates.sort(key=lambda p: int(_NUMBERED.fullmatch(p.name).group(1)), reverse=True)
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            also = f'; skipped {"; ".join(skipped)}' if skipped else ''
            return str(path), (f'--resume auto: {reason}; resuming from {path}, the newest '
                               f'complete checkpoint{also}')
        skipped.append(f'{path.name} ({problem.split(" (")[0]})')
    if not candidates and not pointer.is_file():
        return None, None
    raise NoCompleteCheckpointError(
        f'--resume auto: no complete checkpoint in {work_dir}: {reason}'
        + (f'; incomplete: {", ".join(skipped)}' if skipped else '; no iter_N.pth file either')
        + '. Start again without --resume in a new --work-dir (or delete this one), or give a '
          'checkpoint file with --resume PATH.')
