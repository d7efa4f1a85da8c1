"""RemoteReward against a stub reward server on 127.0.0.1 (the reward-server protocol).

The stub runs in a thread of the test process on an ephemeral port and is shut down after each
test; nothing else is contacted.
"""
import io
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from rankekit.registry import REWARDS
from rankekit.rewards.remote import RemoteReward, RemoteRewardError


class StubServer:
    """A reward server: scores = mean pixel of the decoded JPEG + len(prompt) / 100.

    ``plan`` is a list of behaviours for the next requests (then 'ok'): 'ok', 'error' (500 with a
    traceback), 'missing' (404), 'slow' (answers after ``delay`` s), 'no_key', 'short', 'tensor'.
    """

    def __init__(self):
        self.plan, self.requests, self.delay = [], [], 1.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                stub.requests.append(pickle.loads(body))  # the test trusts its own client
                stub.handle(self, stub.plan.pop(0) if stub.plan else 'ok')

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle(self, handler, behaviour):
        request = self.requests[-1]
        means = [np.asarray(Image.open(io.BytesIO(j), formats=['jpeg'])).mean() / 255
                 for j in request['images']]
        scores = [m + len(p) / 100 for m, p in zip(means, request.get('prompts', [''] * 99))]
        status, answer = 200, {'scores': scores, 'extra': 'ignored'}
        if behaviour == 'error':
            status, answer = 500, b'Traceback (most recent call last):\nKeyError: model\n'
        elif behaviour == 'missing':
            status, answer = 404, b'Not Found'
        elif behaviour == 'slow':
            time.sleep(self.delay)
        elif behaviour == 'no_key':
            answer = {'outputs': scores}
        elif behaviour == 'short':
            answer = {'scores': np.asarray(scores[:-1])}
        elif behaviour == 'tensor':
            answer = {'scores': torch.tensor(scores)}
        data = answer if isinstance(answer, bytes) else pickle.dumps(answer)
        try:
            handler.send_response(status)
            handler.send_header('Content-Length', str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            pass

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    stub = StubServer()
    yield stub
    stub.close()


def _images(n=5, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _reward(server, **kwargs):
    kwargs = dict(dict(url=server.url, timeout=5.0, retries=2, backoff=0.01), **kwargs)
    return REWARDS.build(dict(type='RemoteReward', **kwargs))


def test_scores_come_from_the_server_in_batches(server):
    reward = _reward(server, batch_size=2, extra=dict(only_strict=False))
    images, prompts = _images(), ['a', 'bb', 'ccc', 'dddd', 'eeeee']
    scores = reward(images, prompts)
    assert scores.shape == (5,) and scores.dtype == torch.float32
    assert not reward.differentiable and reward.name == 'remote_reward'
    # 3 requests of 2, 2, 1 images; each as the reward-server format: JPEG bytes + prompts + extra
    assert [len(r['images']) for r in server.requests] == [2, 2, 1]
    assert [r['prompts'] for r in server.requests] == [['a', 'bb'], ['ccc', 'dddd'], ['eeeee']]
    assert all(r['only_strict'] is False for r in server.requests)
    assert all(j[:2] == b'\xff\xd8' for r in server.requests for j in r['images'])  # JPEG
    # the scores are the server's: the JPEG's mean pixel (close to the image's) + len(prompt)
    expected = images.mean(dim=(1, 2, 3)) + torch.tensor([len(p) / 100 for p in prompts])
    torch.testing.assert_close(scores, expected, atol=0.02, rtol=0)
    image_only = _reward(server, send_prompts=False)
    image_only(images[:1], ['x'])
    assert 'prompts' not in server.requests[-1]


def test_server_errors_are_retried_then_reported(server):
    reward = _reward(server)
    server.plan = ['error', 'error']  # two 500s, then an answer: retries=2 is enough
    assert reward(_images(2), ['a', 'b']).shape == (2,)
    assert len(server.requests) == 3
    server.plan = ['error'] * 3
    with pytest.raises(RemoteRewardError) as info:
        reward(_images(2), ['a', 'b'])
    message = str(info.value)
    assert f"reward 'remote_reward' (RemoteReward, url={server.url})" in message
    assert 'failed after 3 attempts' in message and 'HTTP 500: KeyError: model' in message
    server.plan = ['missing']  # a 4xx is not retried
    count = len(server.requests)
    with pytest.raises(RemoteRewardError, match='after 1 attempt in .*HTTP 404'):
        reward(_images(2), ['a', 'b'])
    assert len(server.requests) == count + 1


def test_time_out_is_retried_and_bounded(server):
    server.delay = 1.0
    reward = _reward(server, timeout=0.2, retries=1)
    server.plan = ['slow', 'slow']
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r'after 2 attempts .*no answer within '
                                                r'timeout=0.2 s'):
        reward(_images(1), ['a'])
    assert time.monotonic() - start < 2.0
    server.plan = ['slow']  # one slow answer, then a quick one
    assert _reward(server, timeout=0.2)(_images(1), ['a']).shape == (1,)


@pytest.mark.parametrize('behaviour, phrase', [
    ('no_key', "the answer has no 'scores' entry (it has ['outputs']); set score_key="),
    ('short', "the answer's 'scores' holds 1 scores for 2 images"),
    ('tensor', 'the answer is not a pickled dict of scores (UnpicklingError: the answer holds a '
               'torch._utils._rebuild_tensor_v2'),
])
def test_bad_answers_are_clear_errors(server, behaviour, phrase):
    server.plan = [behaviour]
    with pytest.raises(RemoteRewardError) as info:
        _reward(server)(_images(2), ['a', 'b'])
    assert phrase in str(info.value)
    assert len(server.requests) == 1  # a bad answer is not retried
    server.plan = ['no_key']
    other = _reward(server, score_key='outputs')  # reward-server's DeQA app answers 'outputs'
    assert other(_images(2), ['a', 'b']).shape == (2,)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_server_down_is_one_clear_error():
    url = f'http://127.0.0.1:{_free_port()}'
    with pytest.raises(RemoteRewardError) as info:  # found when the reward is built
        REWARDS.build(dict(type='RemoteReward', url=url))
    message = str(info.value)
    assert f'url={url}' in message and 'no reward server answers at 127.0.0.1:' in message
    assert 'yifan123/reward-server' in message and 'check_connection=False' in message
    reward = REWARDS.build(dict(type='RemoteReward', url=url, check_connection=False,
                                retries=2, backoff=0.01))
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r'failed after 3 attempts .*Connection refused.*'
                                                r'Is a reward server .* running there\?'):
        reward(_images(1), ['a'])
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize('kwargs, phrase', [
    (dict(url='127.0.0.1:18085'), "url must be an http(s) URL such as 'http://127.0.0.1:18085'"),
    (dict(url='http://127.0.0.1:1', extra=dict(images=[])), "extra may not set ['images']"),
    (dict(url='http://127.0.0.1:1', batch_size=0), 'batch_size must be an int >= 1, got 0'),
])
def test_bad_arguments(kwargs, phrase):
    with pytest.raises(ValueError) as info:
        RemoteReward(check_connection=False, **kwargs)
    assert phrase in str(info.value)
