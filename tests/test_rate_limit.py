"""The publish rate limit per producer: refusals are clear, and nothing refused is stored."""

import pytest
import requests

from dpmq.errors import TooLarge, TooManyRequests
from dpmq.ratelimit import RateLimiter


def test_a_bucket_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate=10, burst=5)
    for _ in range(5):
        limiter.take("p", 1, now=100.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("p", 1, now=100.0)
    assert "retry in 0.10 s" in str(refused.value) and refused.value.retry_after == 1
    limiter.take("other", 5, now=100.0)         # each producer has its own bucket
    limiter.take("p", 1, now=100.11)
    with pytest.raises(TooManyRequests):
        limiter.take("p", 2, now=100.2)
    limiter.take("p", 2, now=100.31)
    with pytest.raises(TooLarge):
        limiter.take("p", 6, now=500.0)


def test_no_rate_means_no_limit():
    limiter = RateLimiter(rate=0, burst=1)
    for _ in range(10_000):
        limiter.take("p", 100)


def _send(running, data, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(running.url + "/ProducerSend", headers=headers,
                         data={"topic": "t", "messageData": data})


def test_a_producer_over_the_rate_gets_429_and_nothing_is_stored(make_broker):
    # one message every 100 s once the burst is spent: no machine is slow enough to earn one back
    running = make_broker("memory", mq={"publishRate": 0.01, "publishBurst": 3})
    assert [_send(running, str(n)).json()["code"] for n in range(3)] == [0, 0, 0]
    refused = _send(running, "too fast")
    assert refused.status_code == 429 and refused.json()["code"] == -1
    assert "mq.publishRate" in refused.json()["msg"] and int(refused.headers["Retry-After"]) >= 1
    batch = requests.post(running.url + "/ProducerSendBatch",
                          json={"topic": "t", "messages": ["a", "b", "c", "d"]})
    assert batch.status_code == 413 and "mq.publishBurst" in batch.json()["msg"]
    (topic,) = running.get("/Console/GetTopics")["data"]
    assert topic["published"] == 3


def test_with_auth_each_token_has_its_own_rate(make_broker):
    tokens = [{"token": f"p{n}-secret-token-value", "role": "producer"} for n in range(2)]
    running = make_broker("memory", auth={"enabled": True, "tokens": tokens},
                          mq={"publishRate": 0.01, "publishBurst": 2})
    first, second = (t["token"] for t in tokens)
    assert [_send(running, "x", first).status_code for _ in range(3)] == [200, 200, 429]
    assert [_send(running, "y", second).status_code for _ in range(2)] == [200, 200]
