"""Delivery: the shard threads that write messages to consumers (:mod:`.shards`), one
subscription's cursor, flights, acks and retries (:mod:`.subscription`), groups spread over
processes (:mod:`.shared_group`), and how shards wait (:mod:`.shard_waits`). Delivery knows a
consumer only through :class:`.consumer_connection.ConsumerConnection`, the seam every transport
implements."""
