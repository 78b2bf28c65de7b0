"""The SQLite engine (the default, durable, one file): the engine and its group commit
(:mod:`.engine`), the tables (:mod:`.schema`), the console's queries (:mod:`.browse`),
subscription owners (:mod:`.owners`) and the one-broker-per-file lock (:mod:`.store_lock`)."""
