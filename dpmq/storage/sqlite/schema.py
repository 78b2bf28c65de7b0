"""The tables of the ``sqlite`` store, created on open if missing.

Messages are kept per topic by offset (``without rowid``: the primary key is the table), with an
index on MessageCodes for lookups by code. The other tables hold what a broker must not forget
across a restart: delayed messages, consumers' cursors, delivery attempts, dead letters, requeued
messages, idempotency keys and who owns each subscription.
"""

SCHEMA = [
    """create table if not exists messages (
        topic text not null, offset integer not null, code text not null, data text not null,
        created real not null, key text, primary key (topic, offset)) without rowid""",
    "create index if not exists messages_code on messages (code)",
    """create table if not exists topics (
        topic text primary key, head integer not null) without rowid""",
    """create table if not exists delayed (
        code text primary key, topic text not null, data text not null, created real not null,
        key text, due real not null) without rowid""",
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
        created real not null, dead_at real not null, primary key (topic, sub, offset)) without rowid""",
    """create table if not exists requeued (
        topic text not null, sub text not null, offset integer not null, code text not null,
        data text not null, key text, created real not null,
        primary key (topic, sub, offset)) without rowid""",
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
]
