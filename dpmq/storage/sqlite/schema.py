"""The tables of the ``sqlite`` store, created on open if missing, and the columns added since.

Messages are kept per topic by offset (``without rowid``: the primary key is the table), with an
index on MessageCodes for lookups by code. The other tables hold what a broker must not forget
across a restart: delayed messages, consumers' cursors, delivery attempts, dead letters, requeued
messages, idempotency keys, who owns each subscription and where forgotten subscriptions stood.
A file made by an earlier version gets the columns it lacks on open (:data:`ADDED_COLUMNS`).
"""

SCHEMA = [
    """create table if not exists messages (
        topic text not null, offset integer not null, code text not null, data text not null,
        created real not null, key text, expires real not null default 0, trace text,
        primary key (topic, offset)) without rowid""",
    "create index if not exists messages_code on messages (code)",
    """create table if not exists topics (
        topic text primary key, head integer not null) without rowid""",
    """create table if not exists delayed (
        code text primary key, topic text not null, data text not null, created real not null,
        key text, due real not null, expires real not null default 0, trace text) without rowid""",
    "create index if not exists delayed_due on delayed (due)",
    """create table if not exists subscriptions (
        topic text not null, sub text not null, cursor integer not null, updated real not null,
        primary key (topic, sub)) without rowid""",
    """create table if not exists attempts (
        topic text not null, sub text not null, offset integer not null, count integer not null,
        primary key (topic, sub, offset)) without rowid""",
    """create table if not exists dead_letters (
        topic text not null, sub text not null, offset integer not null, code text not null,
        data text not null, key text, reason text not null, attempts integer not null,
        created real not null, dead_at real not null, expires real not null default 0,
        trace text, primary key (topic, sub, offset)) without rowid""",
    """create table if not exists requeued (
        topic text not null, sub text not null, offset integer not null, code text not null,
        data text not null, key text, created real not null, expires real not null default 0,
        trace text, primary key (topic, sub, offset)) without rowid""",
    # Who owns a subscription (with auth on, the identity that created it) and whether it is
    # durable; apart from the cursors so that their hot upserts stay as they are.
    """create table if not exists owners (
        topic text not null, sub text not null, owner text, durable integer not null,
        created real not null, primary key (topic, sub)) without rowid""",
    # One row that /readyz rewrites: a transaction that writes nothing succeeds even on a file
    # system that turned read-only, so the probe must really write.
    "create table if not exists probe (id integer primary key, at real not null)",
    """create table if not exists idempotency (
        topic text not null, key text not null, code text not null, created real not null,
        primary key (topic, key)) without rowid""",
    # Where the cursor of a subscription retention forgot for idleness stood, kept for another
    # retention period so that a returning consumer is told what it missed.
    """create table if not exists forgotten (
        topic text not null, sub text not null, cursor integer not null,
        forgotten_at real not null, primary key (topic, sub)) without rowid""",
    # Retention asks which it forgot since a time (forgotten_since) and deletes the old ones.
    "create index if not exists forgotten_at on forgotten (forgotten_at)",
    # A subscription that gets a cursor again is no longer forgotten. A trigger, so that the
    # sweep's upsert of cursors that exist already (an update, not an insert) costs nothing more.
    """create trigger if not exists remembered after insert on subscriptions begin
        delete from forgotten where topic = new.topic and sub = new.sub; end""",
]

#: (table, column, its definition): columns added since the first version, which
#: :func:`add_missing_columns` adds to a file that lacks them.
ADDED_COLUMNS = [
    (table, column, definition)
    for column, definition in (
        ("expires", "real not null default 0"),     # a message's ttl: 0 = never expires
        ("trace", "text"),                          # the producer's traceparent, or null
    )
    for table in ("messages", "delayed", "dead_letters", "requeued")
]


def add_missing_columns(db):
    """Add the :data:`ADDED_COLUMNS` a file made by an earlier version lacks (its rows get the
    default, so its messages never expire and have no traceparent)."""
    for table, column, definition in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"pragma table_info({table})")}:
            db.execute(f"alter table {table} add column {column} {definition}")
