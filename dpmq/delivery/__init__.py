"""Delivery: the shard threads that write messages to consumers (:mod:`.shards`), one
subscription's cursor, flights, acks and retries (:mod:`.subscription`), groups spread over
processes (:mod:`.shared_group`), and how shards wait (:mod:`.shard_waits`). Delivery knows a
consumer only as a :class:`~dpmq.transport.connection.Connection` offering bytes."""
