"""How consumers are connected: the WebSocket stream DPMQ owns once a consumer is accepted.

Delivery never sees the protocol: it offers prebuilt message bytes to a consumer's
:class:`~dpmq.transport.connection.Connection` and hears back which were written; the transport parses what
the consumer sends (acks), answers the protocol's own frames and closes.
"""
