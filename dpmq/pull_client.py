"""The pull consumer, apart from the push :class:`dpmq.client.Consumer` because it shares none of
its connection loop: each call is one request through :class:`dpmq.http_client.HttpClient`, and
between calls the broker holds the cursor and the messages in flight.
"""

from .client_messages import as_message, report_gap
from .http_client import HttpClient, settle, subscription


class PullConsumer(HttpClient):
    """Pulls messages of one topic's durable subscription with plain HTTP requests, for programs
    that cannot hold a connection open (cron jobs, serverless functions).

    Identify the subscription by ``consumer_id``, ``group``, or both (a member of that group).
    :meth:`pull` answers with what is ready, or waits up to ``wait`` seconds for something (a long
    poll). With ``auto_ack=False`` (the default) pulled messages are in flight until :meth:`ack`:
    not acked within the broker's ``mq.ackTimeout``, they are delivered again (``status`` + 1),
    then dead-lettered, as for WebSocket consumers with ``ack=True``; :meth:`nack` asks for them
    again at once. With ``auto_ack=True`` a pull moves the subscription past what it answers.

    A consumerId connected by WebSocket or SSE cannot pull at the same time (``ClientError``,
    status 409). Gaps reach ``on_gap`` (or the log) as for :class:`dpmq.client.Consumer`.
    Thread-safe: calls share one connection, one at a time.

        puller = PullConsumer("http://127.0.0.1:8080", "orders", "nightly")
        batch = puller.pull(max=100, wait=20)
        ...                                 # the work
        puller.ack(batch)
    """

    def __init__(self, url, topic, consumer_id=None, group=None, auto_ack=False, token=None,
                 timeout=10.0, retries=3, on_gap=None):
        if not consumer_id and not group:
            raise ValueError("a PullConsumer needs a consumer_id or a group: the durable"
                             " subscription it pulls from")
        super().__init__(url, token=token, timeout=timeout, retries=retries)
        self.topic, self.consumer_id, self.group = topic, consumer_id, group
        self.auto_ack = auto_ack
        self.on_gap = on_gap

    def pull(self, max=100, wait=0):   # noqa: A002 - the broker's field name
        """Up to ``max`` messages (a list, oldest first, empty when ``wait`` seconds passed with
        none). ``max`` and ``wait`` are capped by the broker's ``mq.maxPullMessages`` and
        ``mq.maxPullWait``; a larger one is refused with the limit."""
        body = dict(subscription(self.topic, self.consumer_id, self.group), max=max, wait=wait,
                    autoAck=self.auto_ack)
        reply = self._post("/ConsumerPull", body, timeout=self.timeout + wait)
        if reply.get("gap"):
            report_gap(self.on_gap, reply["gap"], self.consumer_id or self.group)
        return [as_message(item) for item in reply.get("data") or []]

    def ack(self, messages):
        """Settle ``messages`` (Messages or MessageCodes, one or a list); returns the codes
        settled. Raises :class:`NotSettled` when some were not held (unknown, acked already, or
        timed out and delivered again): the others are settled all the same."""
        return settle(self, self.topic, self.consumer_id, self.group, messages, nack=False)

    def nack(self, messages):
        """Ask for ``messages`` again now (``status`` + 1); returns the codes settled, raises
        :class:`NotSettled` as :meth:`ack` does."""
        return settle(self, self.topic, self.consumer_id, self.group, messages, nack=True)
