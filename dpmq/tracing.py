"""OpenTelemetry spans for publish and delivery, recorded only where the application set them up.

A message published with a W3C ``traceparent`` (:attr:`dpmq.message.Record.trace`) gets a
PRODUCER span ``publish <topic>`` once it is stored, and a CONSUMER span ``deliver <topic>`` each
time a subscription hands it to a member, both children of the producer's context. The context is
read by the OpenTelemetry API's W3C propagator; attributes follow the messaging semantic
conventions (``messaging.system`` is ``dpmq``).

Whether DPMQ records spans is decided once, when the broker starts (:meth:`Tracing.start`): only
if the ``opentelemetry`` API can be imported and the application has already set a real
TracerProvider (the SDK's), not the API's default proxy or no-op one. A provider set after the
broker started is not picked up: restart the broker. When it is off, nothing here is imported or
called per message: the broker and the delivery shards hold no hook (None) and look at a message's
``trace`` only when it has one.
"""

import logging

log = logging.getLogger(__name__)

SYSTEM = "dpmq"


class Tracing:
    """The broker's spans. ``provider``: a TracerProvider to use instead of the global one (tests).

    :meth:`start` is called once, before the delivery shards run; after it the object is only
    read, and :meth:`published` and :meth:`delivered` may be called from any thread (the SDK's
    tracer is thread-safe). They never raise: a span that cannot be recorded is logged and the
    message goes on."""

    def __init__(self, provider=None):
        self._provider = provider
        self.enabled = False
        self._tracer = self._extract = self._producer = self._consumer = None
        self._warned = False

    def start(self):
        """Decide, once, whether to record spans; returns ``enabled``."""
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            return False
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            log.debug("OpenTelemetry has no TracerProvider set up: DPMQ records no spans")
            return False
        from . import __version__
        self._tracer = provider.get_tracer("dpmq", __version__)
        self._extract = TraceContextTextMapPropagator().extract
        self._producer, self._consumer = trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER
        self.enabled = True
        log.info("OpenTelemetry: DPMQ records publish and deliver spans of traced messages")
        return True

    def published(self, messages, codes):
        """Stored ``messages`` (:class:`~dpmq.message.NewMessage`), with the MessageCode the
        publish answered for each: a span for each that carries a traceparent, from when it was
        accepted to now. One whose idempotencyKey repeated an earlier message stored nothing and
        gets none."""
        for new, code in zip(messages, codes):
            if new.trace is not None and code == new.code:
                self._record(f"publish {new.topic}", self._producer, new.trace, {
                    "messaging.system": SYSTEM,
                    "messaging.operation.name": "publish",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": new.topic,
                    "messaging.message.id": code,
                }, int(new.created * 1e9))

    def delivered(self, subscription, member, record, attempts):
        """A traced ``record`` handed to ``member`` of ``subscription`` (``attempts`` earlier
        deliveries, the pushed ``Status``). Called on the member's delivery shard."""
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "deliver",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.subscription.name": subscription.key,
            "messaging.message.id": record.code,
            "messaging.client.id": member.consumer_id,
            "dpmq.transport": member.conn.framing.name,
            "dpmq.status": attempts,
        }
        if member.group is not None:
            attributes["messaging.consumer.group.name"] = member.group
        self._record(f"deliver {record.topic}", self._consumer, record.trace, attributes)

    def _record(self, name, kind, traceparent, attributes, start=None):
        try:
            span = self._tracer.start_span(name, context=self._extract({"traceparent": traceparent}),
                                           kind=kind, attributes=attributes, start_time=start)
            span.end()
        except Exception:  # noqa: BLE001 - a span must never cost a message its delivery
            log.warning("recording the OpenTelemetry span %r failed", name,
                        exc_info=not self._warned)
            self._warned = True
