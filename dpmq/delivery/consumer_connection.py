"""What delivery needs of a consumer's connection: the seam between delivery and the transports.

Delivery (the shards, subscriptions, flights and acks) knows a consumer only through this
interface. A transport implements it once (:class:`dpmq.transport.connection.Connection` does,
over any stream socket) and brings its *framing*: how a message's payload, a reply and a
keep-alive are written on its stream. A WebSocket and an event stream differ only there, so a
new transport plugs in without a change to the delivery loop (``tests/test_transport_seam.py``
drives the subscription code with a second framing).

Thread-safety: every method may be called from any thread; the delivery shard that owns the
member calls the data methods, the transport's threads call the rest.
"""

from typing import Protocol

#: What :meth:`ConsumerConnection.offer_all` answers when it took the messages (False when not):
#: queued, to be written by a later flush, or already written whole to the stream: nothing to
#: flush, and :meth:`ConsumerConnection.take_written` does not report them (the caller knows).
QUEUED = 1
WRITTEN = 2


class Framing(Protocol):
    """How one transport puts things on its stream. Stateless: one serves every connection."""

    #: The transport's name as the console shows it: "websocket", "sse" or "pull".
    name: str
    #: What keeps an idle connection alive (a WebSocket Ping, an event-stream comment).
    keepalive: bytes

    def message(self, payload: bytes) -> bytes:
        """The bytes that deliver one message's JSON ``payload``."""

    def reply(self, answer: dict) -> bytes:
        """The bytes of an answer that is not a message (an error about an ack)."""

    def notice(self, notice: dict):
        """The bytes of a notice (a gap in what the subscription received) written before the
        next message, or None when this connection does not take notices."""

    def closes(self, data: bytes) -> bool:
        """Whether writing ``data`` ends the stream, so that no message may follow it."""


class ConsumerConnection(Protocol):
    """One consumer's outgoing side: a bounded buffer of prebuilt bytes and the record of which
    messages were written whole. Acks and the connection's end come back through the transport's
    own thread (:meth:`dpmq.broker.broker.Broker.reply`, ``unsubscribe``)."""

    framing: Framing
    raw: object             # what the shard's selector watches for writability
    on_progress: object     # set by the shard: called when it must flush or look again
    closed: bool            # no more writes of any kind
    pending_bytes: int      # bytes waiting to be written
    partial_writes: bool    # whether a message may be cut off mid-write when it ends

    def attach(self, budget) -> None:
        """Count what waits here in the broker's budget from now on."""

    def release(self) -> None:
        """The shard is done with it: let go of what it holds, and leave the budget."""

    def has_room(self) -> bool:
        """Whether a message like the last one offered would be taken now (a guess)."""

    def offer(self, frame: bytes, record) -> bool:
        """Queue one message's bytes; False if it cannot take them now."""

    def offer_all(self, data: bytes, ends: list, records: list):
        """Queue several messages' bytes at once, all or none: False, :data:`QUEUED` or
        :data:`WRITTEN`."""

    def reply(self, answer: dict) -> bool:
        """Queue an answer that is not a message; False if closing."""

    def notice(self, notice: dict) -> None:
        """Queue a gap notice to come before the next message, if this transport carries them."""

    def flush(self) -> bool:
        """Write what the stream takes now without blocking; True when nothing waits."""

    def take_written(self) -> list:
        """The records written whole since the last call, in order, but those of an
        :meth:`offer_all` answered :data:`WRITTEN`."""

    def take_returned(self) -> list:
        """The records it gave back unwritten since the last call (a pull whose client went
        away), for the subscription to hand out again."""

    def progress_seen(self) -> None:
        """The shard took an ``on_progress`` post of this connection (before its catch-up)."""

    def unwritten(self) -> list:
        """The records queued and not yet written whole, in order."""

    def first_unwritten(self):
        """The offset of the first queued message not yet written whole, or None."""

    def oldest_unwritten(self, wanted):
        """The first queued, unwritten record for which ``wanted(record)`` is true, or None."""
