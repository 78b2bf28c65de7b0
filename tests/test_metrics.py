"""GET /metrics, scraped and parsed as Prometheus would."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dpmq.metrics import History, OneWriterHistogram

from helpers import Collector, wait_for


def _scrape(running, **headers):
    reply = running.http.get(running.url + "/metrics", headers=headers)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/plain")
    return {sample.name + repr(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(reply.text) for sample in family.samples}


def test_metrics_count_what_happened(make_broker, engine_name):
    running = make_broker(engine_name, mq={"ackTimeout": 0.2, "sendRetryCount": 1})
    fine = Collector(running.ws_url, "orders", "fine")
    lazy = Collector(running.ws_url, "orders", "lazy", "?ack=1")
    wait_for(lambda: len(running.broker.members()) == 2, what="two consumers")
    running.publish_many("orders", ["a", "b"])
    fine.wait_count(2)
    wait_for(lambda: running.get("/Console/Ping")["data"]["deadLettered"] == 2, what="dead letters")
    lazy.wait_count(4)
    metrics = _scrape(running)
    topic = "[('topic', 'orders')]"
    assert metrics["dpmq_messages_published_total" + topic] == 2
    assert metrics["dpmq_messages_delivered_total" + topic] == 6     # 2 + 2 + 2 redelivered
    assert metrics["dpmq_messages_redelivered_total" + topic] == 2
    assert metrics["dpmq_messages_failed_total" + topic] == 4
    assert metrics["dpmq_messages_dead_lettered_total" + topic] == 2
    assert metrics["dpmq_messages_acked_total" + topic] == 0
    assert metrics["dpmq_consumers_connected[]"] == 2
    assert metrics["dpmq_buffer_capacity[]"] == 100
    assert metrics["dpmq_buffer_used[]"] == 0                       # unpaced: handed out at commit
    assert metrics["dpmq_messages_awaiting_paced_push[]"] == 0      # and no pacing queue
    assert "dpmq_buffer_depth[]" not in metrics
    assert metrics["dpmq_store_commit_seconds_count[]"] == 1
    assert metrics["dpmq_publish_to_push_seconds_count[]"] == 2


def test_topic_labels_are_bounded(make_broker):
    running = make_broker("memory", mq={"metricsTopics": 3})
    for n in range(6):
        running.publish_many(f"topic{n}", ["x"] * (n + 1))
    metrics = _scrape(running)
    labels = {key for key in metrics if key.startswith("dpmq_messages_published_total")}
    assert len(labels) == 4
    assert metrics["dpmq_messages_published_total[('topic', '_other')]"] == 1 + 2 + 3


def test_metrics_need_admin_when_auth_is_on(make_broker):
    running = make_broker("memory", auth={"enabled": True, "tokens": [
        {"token": "admin-token", "role": "admin"}, {"token": "producer-token", "role": "producer"}]})
    assert running.http.get(running.url + "/metrics").status_code == 401
    assert running.http.get(running.url + "/metrics",
                            headers={"Authorization": "Bearer producer-token"}).status_code == 403
    _scrape(running, Authorization="Bearer admin-token")


def test_the_push_latency_histogram_counts_each_value_in_the_right_bucket():
    histogram = OneWriterHistogram("h_seconds", "test", buckets=(0.001, 0.01, 1))
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 7.0):
        histogram.observe(value)
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: [histogram.family()]})())
    text = generate_latest(registry).decode()
    for line in ('h_seconds_bucket{le="0.001"} 2.0', 'h_seconds_bucket{le="0.01"} 4.0',
                 'h_seconds_bucket{le="1.0"} 5.0', 'h_seconds_bucket{le="+Inf"} 6.0',
                 "h_seconds_count 6.0", "h_seconds_sum 7.5135"):
        assert line in text, text


def test_failed_counts_ack_timeouts_and_its_help_says_so(make_broker):
    """Nothing was pushed in vain here: the consumer took each message and never acked it.
    "failed" counts failed delivery attempts, of which an ack timeout is one."""
    running = make_broker("memory", mq={"ackTimeout": 0.2, "sendRetryCount": 1})
    silent = Collector(running.ws_url, "t", "silent", "?ack=1")
    wait_for(lambda: running.broker.members(), what="the consumer")
    running.publish_many("t", ["a"])
    wait_for(lambda: running.get("/Console/Ping")["data"]["deadLettered"] == 1, what="a dead letter")
    assert len(silent.messages) == 2 and silent.closed is None
    reply = running.http.get(running.url + "/metrics")
    families = {family.name: family for family in text_string_to_metric_families(reply.text)}
    failed = families["dpmq_messages_failed"]
    assert [s.value for s in failed.samples
            if s.name.endswith("_total") and s.labels["topic"] == "t"] == [2]
    for words in ("ack timeouts", "nacks", "disconnected"):
        assert words in failed.documentation, failed.documentation


def test_the_rate_history_spans_the_sampler_s_dozes():
    """The sampler dozes while nothing moves: the gap reads as quiet, what woke it counts in its
    last second, and the chart carries on to now."""
    history = History()
    for second in range(3):
        history.sample({"t": [10, 10] + [0] * 7}, 0, now=100.0 + second)
    history.sample({"t": [60, 60] + [0] * 7}, 5, now=120.0)         # woken by 50 publishes
    rates = history.rates(now=120.5)
    assert [r["time"] for r in rates] == [101.0, 102.0, 119.0, 120.0]
    assert [r["published"] for r in rates] == [0, 0, 0, 50.0]
    assert rates[-1]["bufferUsed"] == 5
    later = history.rates(now=130.0)
    assert later[-1] == {"time": 130.0, "published": 0.0, "delivered": 0.0, "bufferUsed": 5}
