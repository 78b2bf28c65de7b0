"""OpenTelemetry spans (dpmq.tracing): a traced message gets a PRODUCER span when it is stored and a
CONSUMER span each time it is handed to a member, both children of the producer's traceparent;
without a configured SDK TracerProvider the broker holds no hook and records nothing.

``trace.set_tracer_provider`` works once per process, so the tests here never call it in this one:
unit tests give :class:`~dpmq.tracing.Tracing` a provider; the end-to-end test replaces the API's
``get_tracer_provider`` for its broker only; the global path runs in a subprocess."""

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dpmq import config
from dpmq.delivery.subscription import Member, Subscription
from dpmq.message import NewMessage, Record, Run, payload
from dpmq.metrics import TopicCounts
from dpmq.tracing import Tracing
from dpmq.transport.frames import WEBSOCKET

from helpers import Collector, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACE = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans():
    """``(provider, exporter)``: an SDK TracerProvider whose spans end up in ``exporter``."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def child_of_trace(span):
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16)
    assert span.parent.is_remote


def test_publish_span_per_stored_traced_message(spans):
    provider, exporter = spans
    tracing = Tracing(provider)
    assert tracing.start() and tracing.enabled
    traced = NewMessage("a" * 40, "orders", "x", 1700000000.5, trace=TRACE)
    plain = NewMessage("b" * 40, "orders", "y", 1700000000.5)
    repeated = NewMessage("c" * 40, "orders", "z", 1700000000.5, trace=TRACE)
    # the repeated idempotencyKey was answered with the earlier message's code: nothing stored
    tracing.published([traced, plain, repeated], ["a" * 40, "b" * 40, "a" * 40])
    (span,) = exporter.get_finished_spans()
    assert span.name == "publish orders" and span.kind is trace.SpanKind.PRODUCER
    child_of_trace(span)
    assert span.start_time == 1700000000500000000       # from when it was accepted
    assert dict(span.attributes) == {
        "messaging.system": "dpmq", "messaging.operation.name": "publish",
        "messaging.operation.type": "send", "messaging.destination.name": "orders",
        "messaging.message.id": "a" * 40}


def test_deliver_span_names_the_consumer_group_and_transport(spans):
    provider, exporter = spans
    tracing = Tracing(provider)
    tracing.start()
    record = Record(7, "d" * 40, "orders", "x", 1700000000.0, trace=TRACE)
    member = SimpleNamespace(consumer_id="worker-1", group="billing",
                             conn=SimpleNamespace(framing=WEBSOCKET))
    tracing.delivered(SimpleNamespace(key="g:billing"), member, record, 2)
    (span,) = exporter.get_finished_spans()
    assert span.name == "deliver orders" and span.kind is trace.SpanKind.CONSUMER
    child_of_trace(span)
    assert dict(span.attributes) == {
        "messaging.system": "dpmq", "messaging.operation.name": "deliver",
        "messaging.operation.type": "process", "messaging.destination.name": "orders",
        "messaging.destination.subscription.name": "g:billing", "messaging.message.id": "d" * 40,
        "messaging.client.id": "worker-1", "messaging.consumer.group.name": "billing",
        "dpmq.transport": "websocket", "dpmq.status": 2}


def test_a_span_that_fails_never_fails_the_message(spans, caplog):
    provider, _ = spans
    tracing = Tracing(provider)
    tracing.start()
    tracing._tracer = None      # anything that makes start_span raise
    tracing.published([NewMessage("a" * 40, "t", "x", 1.0, trace=TRACE)], ["a" * 40])
    assert "recording the OpenTelemetry span 'publish t' failed" in caplog.text


def test_off_without_a_provider_or_without_opentelemetry(monkeypatch):
    assert Tracing().start() is False       # this process never set one: the API's proxy
    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
    assert Tracing().start() is False
    monkeypatch.setitem(sys.modules, "opentelemetry", None)     # not installed
    tracing = Tracing(TracerProvider())
    assert tracing.start() is False and tracing.enabled is False


class FakeConn:
    """What a subscription uses of a connection: it takes everything."""

    framing = WEBSOCKET
    pending_bytes = 0

    def __init__(self):
        self.records = []

    def has_room(self):
        return True

    def offer(self, frame, record):
        self.records.append(record)
        return True

    def offer_all(self, joined, ends, records):
        self.records += records
        return True


def subscription(key, ack=False, on_deliver=None):
    limits = config.build({}).mq
    sub = Subscription("t", key, 0, {}, [], None, limits, None, [], TopicCounts().of("t"))
    sub.behind = False
    sub.on_deliver = on_deliver
    member = Member(FakeConn(), None, "t", "c1", group=key[2:] if key.startswith("g:") else None,
                    ack=ack)
    sub.join(member)
    return sub, member


@pytest.mark.parametrize("key, ack", [("c:c1", False), ("c:c1", True), ("g:g", False)],
                         ids=["whole-run", "ack", "group"])
def test_the_subscription_tells_each_traced_message_it_hands_out(key, ack):
    seen = []
    sub, member = subscription(key, ack, lambda s, m, record, attempts:
                               seen.append((s, m, record.offset, attempts)))
    records = [Record(1, "a" * 40, "t", "x", 1.0, trace=TRACE), Record(2, "b" * 40, "t", "y", 1.0),
               Record(3, "c" * 40, "t", "z", 1.0, trace=TRACE)]
    sub.offer_live(Run([(r, payload(r)) for r in records]), 0.0)
    assert [r.offset for r in member.conn.records] == [1, 2, 3]
    assert seen == [(sub, member, 1, 0), (sub, member, 3, 0)]


def test_without_a_hook_traced_messages_go_out_as_before():
    sub, member = subscription("c:c1", ack=True)
    record = Record(1, "a" * 40, "t", "x", 1.0, trace=TRACE)
    sub.offer_live(Run([(record, payload(record))]), 0.0)
    assert member.conn.records == [record]


def test_a_broker_without_a_provider_holds_no_hook(make_broker):
    broker = make_broker("memory").broker
    assert broker.tracing.enabled is False
    assert broker._trace_publish is None
    assert all(shard.on_deliver is None for shard in broker.shards)


def test_spans_through_a_broker(make_broker, keep, spans, monkeypatch):
    provider, exporter = spans
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)   # as the app set it
    running = make_broker("memory")
    assert running.broker.tracing.enabled
    lone = keep(Collector(running.ws_url, "t", "ws"))
    member = keep(Collector(running.ws_url, "t", "m1", "?group=g&ack=1", auto_ack=True))
    wait_for(lambda: len(running.broker.members()) == 2, what="both consumers joined")
    reply = requests.post(running.url + "/ProducerSend", data={"topic": "t", "messageData": "hi"},
                          headers={"traceparent": TRACE}).json()
    assert reply["code"] == 0
    assert running.publish("t", "untraced")["code"] == 0
    for consumer in (lone, member):
        wait_for(lambda c=consumer: len(c.messages) == 2, what="both messages at each consumer")
    assert lone.messages[0]["TraceParent"] == TRACE

    finished = wait_for(lambda: len(exporter.get_finished_spans()) >= 3 and
                        exporter.get_finished_spans(), what="three spans")
    assert len(finished) == 3, [s.name for s in finished]   # none for the untraced message
    for span in finished:
        child_of_trace(span)
        assert span.attributes["messaging.message.id"] == reply["msg"]
        assert span.attributes["messaging.destination.name"] == "t"
    (published,) = [s for s in finished if s.kind is trace.SpanKind.PRODUCER]
    assert published.name == "publish t"
    delivered = {s.attributes["messaging.client.id"]: s for s in finished
                 if s.kind is trace.SpanKind.CONSUMER}
    assert set(delivered) == {"ws", "m1"}
    assert {s.name for s in delivered.values()} == {"deliver t"}
    assert delivered["ws"].attributes["messaging.destination.subscription.name"] == "c:ws"
    assert "messaging.consumer.group.name" not in delivered["ws"].attributes
    assert delivered["m1"].attributes["messaging.consumer.group.name"] == "g"
    assert {s.attributes["dpmq.transport"] for s in delivered.values()} == {"websocket"}


def test_the_global_provider_is_looked_at_once_when_the_broker_starts():
    """In a process of its own: the provider the application sets with the API before the broker
    starts is used; one set after is not picked up."""
    script = textwrap.dedent("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from dpmq.tracing import Tracing

        early = Tracing()
        assert early.start() is False
        trace.set_tracer_provider(TracerProvider())
        assert early.enabled is False       # decided when it started
        assert Tracing().start() is True
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
