"""A reward computed by an HTTP reward server, so that heavy reward dependencies live elsewhere.

The protocol is the one of the public ``reward-server`` (yifan123/reward-server) that Flow-GRPO
scores through: one HTTP POST per batch to the server's URL, whose body is a pickled dict
``{'images': [JPEG bytes, ...], 'prompts': [str, ...], **extra}``; the server answers 200 with a
pickled dict holding one score per image under ``'scores'`` (``'outputs'`` for some servers), or
500 with the traceback as text. The standard library does the HTTP (``urllib``): no extra
package.

Pickle runs code when it is read, so the answer is read with an unpickler that only accepts
plain Python values and numpy arrays/scalars; anything else (e.g. a torch tensor) is refused with
a clear error. Still, point ``url`` only at servers you trust: they see your images and prompts.
"""
from __future__ import annotations

import http.client
import io
import pickle
import socket
import time
import urllib.error
import urllib.request
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np
import torch

from rankekit.registry import REWARDS
from rankekit.rewards.base import BaseReward

SERVER_SOURCE = ('a reward server speaking the protocol of yifan123/reward-server (e.g. '
                 'gunicorn "app_geneval:create_app()" there)')
# what a pickled answer may name: numpy arrays and scalars (numpy 1 and 2 module paths)
_ALLOWED_GLOBALS = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict'),
                    *((m, n) for m in ('numpy.core.multiarray', 'numpy._core.multiarray')
                      for n in ('_reconstruct', 'scalar'))}


class RemoteRewardError(RuntimeError):
    """The reward server is down, too slow, or answered something that is not scores."""


class _AnswerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'the answer holds a {module}.{name}; only plain Python '
                                     f'values and numpy arrays are accepted (send scores as a '
                                     f'list of floats)')


def to_jpeg(images: torch.Tensor, quality: int = 75) -> list[bytes]:
    """(N, 3, H, W) images in [0, 1] -> N JPEG files in memory (uint8 as Flow-GRPO rounds)."""
    from PIL import Image
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    out = []
    for array in pixels.permute(0, 2, 3, 1).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format='JPEG', quality=quality)
        out.append(buffer.getvalue())
    return out


@REWARDS.register_module()
class RemoteReward(BaseReward):
    """Scores from an HTTP reward server (the reward-server protocol Flow-GRPO uses).

    Each batch of ``batch_size`` images is sent as JPEG bytes with its prompts; a request that
    fails (connection refused, time-out, HTTP 5xx) is retried ``retries`` times, waiting
    ``backoff`` seconds, then twice as long each time (at most 30 s). When it still fails, the
    error names the URL, the attempts and the last problem. Not differentiable.

    Args:
        url: the server, e.g. ``'http://127.0.0.1:18085'`` (requests are POSTed to it).
        score_key: the answer's entry with one score per image (``'scores'``; reward-server's
            DeQA app answers ``'outputs'``).
        extra: more entries sent with every request, e.g. ``dict(only_strict=False)``.
        send_prompts: send the prompts as ``'prompts'`` (False for image-only servers).
        batch_size: images per request.
        timeout: seconds to connect and, then, to wait for each part of the answer.
        retries: further attempts after a failed request.
        backoff: seconds before the first retry.
        jpeg_quality: JPEG quality of the images sent (75: PIL's default, as Flow-GRPO sends).
        check_connection: open a connection to the server when the reward is built, so that a
            server that is down stops the set-up, not the first rollout minutes later.
        name: name in logs, default ``remote_reward``.
    """

    differentiable = False
    info_example = dict(type='RemoteReward', url='http://127.0.0.1:18085', check_connection=False)

    def __init__(self, url: str, score_key: str = 'scores', extra: dict | None = None,
                 send_prompts: bool = True, batch_size: int = 64, timeout: float = 120.0,
                 retries: int = 5, backoff: float = 1.0, jpeg_quality: int = 75,
                 check_connection: bool = True, name: str | None = None):
        super().__init__(name=name, differentiable=False)
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ValueError(f"RemoteReward url must be an http(s) URL such as "
                             f"'http://127.0.0.1:18085', got {url!r}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f'RemoteReward extra must be a dict of request entries, got '
                            f'{type(extra).__name__}')
        clash = {'images', 'prompts'} & set(extra or {})
        if clash:
            raise ValueError(f'RemoteReward extra may not set {sorted(clash)}: the reward sends '
                             'them itself')
        for key, value, low in (('batch_size', batch_size, 1), ('retries', retries, 0),
                                ('jpeg_quality', jpeg_quality, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f'RemoteReward {key} must be an int >= {low}, got {value!r}')
        if not timeout > 0 or backoff < 0:
            raise ValueError(f'RemoteReward timeout must be > 0 and backoff >= 0, got '
                             f'timeout={timeout!r}, backoff={backoff!r}')
        self.url, self.score_key, self.extra = url, score_key, dict(extra or {})
        self.send_prompts, self.batch_size = send_prompts, batch_size
        self.timeout, self.retries, self.backoff = float(timeout), retries, float(backoff)
        self.jpeg_quality = jpeg_quality
        if check_connection:
            self.check_connection()

    def _where(self) -> str:
        return f"reward '{self.name}' (RemoteReward, url={self.url})"

    def check_connection(self) -> None:
        """Open and close a TCP connection to the server; a clear error when nobody listens."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == 'https' else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=min(self.timeout, 10)).close()
        except OSError as exc:
            raise RemoteRewardError(
                f'{self._where()}: no reward server answers at {parts.hostname}:{port} '
                f'({exc.strerror or exc}). Start {SERVER_SOURCE}, fix url=, or set '
                f'check_connection=False to build without it') from exc

    def _post(self, body: bytes, n: int) -> list[float]:
        """One request with retries -> the n scores of its answer."""
        request = urllib.request.Request(self.url, data=body, method='POST',
                                         headers={'Content-Type': 'application/octet-stream'})
        start, problem = time.monotonic(), ''
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    return self._scores(answer.read(), n)
            except urllib.error.HTTPError as exc:
                text = exc.read().decode('utf-8', 'replace').strip().splitlines()
                problem = f'HTTP {exc.code}' + (f': {text[-1]}' if text else '')
                if exc.code < 500:  # the request itself is wrong: retrying will not help
                    break
            except urllib.error.URLError as exc:
                problem = str(exc.reason)
            except (TimeoutError, socket.timeout):
                problem = f'no answer within timeout={self.timeout:g} s'
            except (OSError, http.client.HTTPException) as exc:
                problem = f'{type(exc).__name__}: {exc}'
        attempts = attempt + 1
        raise RemoteRewardError(
            f'{self._where()}: the request failed after {attempts} attempt'
            f'{"s" if attempts > 1 else ""} in {time.monotonic() - start:.1f} s; last problem: '
            f'{problem}. Is {SERVER_SOURCE} running there? (retries={self.retries}, '
            f'timeout={self.timeout:g} s)')

    def _scores(self, data: bytes, n: int) -> list[float]:
        try:
            answer = _AnswerUnpickler(io.BytesIO(data)).load()
        except Exception as exc:  # noqa: BLE001 - anything unreadable is the server's fault
            raise RemoteRewardError(f'{self._where()}: the answer is not a pickled dict of '
                                    f'scores ({type(exc).__name__}: {exc})') from exc
        if not isinstance(answer, dict) or self.score_key not in answer:
            keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            raise RemoteRewardError(f"{self._where()}: the answer has no '{self.score_key}' "
                                    f'entry (it has {keys}); set score_key= to the entry holding '
                                    f'one score per image')
        value, scores = answer[self.score_key], None
        if not isinstance(value, (str, bytes)):
            try:
                scores = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
            except (TypeError, ValueError):
                pass
        if scores is None or len(scores) != n:
            got = (f'{len(scores)} scores' if scores is not None
                   else f'{type(value).__name__} {str(value)[:60]!r}')
            raise RemoteRewardError(f"{self._where()}: the answer's '{self.score_key}' holds "
                                    f'{got} for {n} images; it must be one number per image')
        return scores

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            request = {'images': to_jpeg(batch, self.jpeg_quality), **self.extra}
            if self.send_prompts:
                request['prompts'] = list(prompts[start:start + self.batch_size])
            scores += self._post(pickle.dumps(request, protocol=4), len(batch))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, url={self.url!r}, score_key={self.score_key!r}'
