"""The SQLite engine (the default, durable, one file): the engine (:mod:`.engine`), its writer
with group commit (:mod:`.commit`), the tables (:mod:`.schema`), the console's queries
(:mod:`.browse`), subscription owners (:mod:`.owners`) and the one-broker-per-file lock
(:mod:`.store_lock`)."""
