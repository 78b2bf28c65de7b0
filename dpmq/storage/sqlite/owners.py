"""The SQLite engine's record of who owns each subscription, and forgetting a subscription.

Ownership lives in its own table beside ``subscriptions`` (a row per subscription, written when
it is first joined), not in the cursor's row: cursors are upserted in bulk by every sweep, and the
owner is looked up once per connection. Retention deletes both together (see ``purge``).
"""

import time

from ..base import Ownership


class SubscriptionOwners:
    """Mixed into :class:`~dpmq.storage.sqlite.engine.SQLiteEngine`."""

    def own(self, topic, sub, owner, durable):
        rows = self._query("select owner, durable from owners where topic = ? and sub = ?",
                           (topic, sub))
        if rows and (rows[0][0] is not None or owner is None):
            return Ownership(rows[0][0], bool(rows[0][1]))     # the usual case: one read

        def run(db, heads):
            # "where true" tells SQLite the upsert's "on conflict" is not a join's.
            db.execute(
                "insert into owners (topic, sub, owner, durable, created) select ?1, ?2, ?3,"
                " max(?4, exists (select 1 from subscriptions where topic = ?1 and sub = ?2)), ?5"
                " where true on conflict (topic, sub) do update"
                " set owner = coalesce(owners.owner, excluded.owner)",
                (topic, sub, owner, int(durable), time.time()))
            found = db.execute("select owner, durable from owners where topic = ? and sub = ?",
                               (topic, sub)).fetchone()
            return Ownership(found[0], bool(found[1]))
        return self._write(run)

    def forget(self, topic, sub):
        def run(db, heads):
            for table in ("subscriptions", "attempts", "dead_letters", "requeued", "owners",
                          "forgotten"):
                db.execute(f"delete from {table} where topic = ? and sub = ?", (topic, sub))
        self._write(run)
