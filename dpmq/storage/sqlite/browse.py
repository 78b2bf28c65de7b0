"""The SQLite engine's read-only queries for the console: topics, the message browser, counts.

Kept apart from the engine's write path; they only read through ``self._browse`` (a read
connection of their own), and they scan: they are for people looking at the broker, not for
delivery, which never waits behind them.
"""


class BrowseQueries:
    """Mixed into :class:`~dpmq.storage.sqlite.engine.SQLiteEngine`."""

    def topics(self):
        out = {topic: {"head": head, "retained": 0, "subscriptions": 0, "deadLetters": 0, "delayed": 0}
               for topic, head in self.heads().items()}
        for field, table in (("retained", "messages"), ("subscriptions", "subscriptions"),
                             ("deadLetters", "dead_letters"), ("delayed", "delayed")):
            for topic, count in self._browse(f"select topic, count(*) from {table} group by topic"):
                out.setdefault(topic, {"head": 0, "retained": 0, "subscriptions": 0,
                                       "deadLetters": 0, "delayed": 0})[field] = count
        return out

    _FLOOR = ("coalesce((select min(cursor) from subscriptions s where s.topic = m.topic),"
              " 4611686018427387904)")

    def messages(self, topic=None, status=None, limit=50, before=None, code=None):
        keys = ("offset", "code", "topic", "data", "created", "key", "expires", "status")
        if status == "delayed":
            rows = self._browse("select 0, code, topic, data, created, key, expires, 'delayed' from delayed"
                               " where (?1 is null or topic = ?1) and (?2 is null or code = ?2)"
                               " order by due limit ?3", (topic, code, limit))
        elif status == "dead":
            rows = self._browse("select offset, code, topic, data, created, key, expires, 'dead'"
                               " from dead_letters"
                               " where (?1 is null or topic = ?1) and (?2 is null or code = ?2)"
                               " and (?3 is null or offset < ?3) order by offset desc limit ?4",
                               (topic, code, before, limit))
        else:
            # One topic is read backwards along its primary key; several are merged by age.
            order = "m.offset desc" if topic is not None else "m.created desc, m.offset desc"
            rows = self._browse(
                f"select * from (select m.offset, m.code, m.topic, m.data, m.created, m.key, m.expires,"
                f" case when m.offset > {self._FLOOR} then 'pending' else 'delivered' end as status"
                f" from messages m where (?1 is null or m.topic = ?1) and (?2 is null or m.code = ?2)"
                f" and (?3 is null or m.offset < ?3) order by {order})"
                f" where (?4 is null or status = ?4) limit ?5", (topic, code, before, status, limit))
        return [dict(zip(keys, row)) for row in rows]

    def count_messages(self, topic=None):
        pending, retained = self._browse(
            f"select coalesce(sum(m.offset > {self._FLOOR}), 0), count(*) from messages m"
            " where (?1 is null or m.topic = ?1)", (topic,))[0]
        delayed = self._browse("select count(*) from delayed where (?1 is null or topic = ?1)",
                              (topic,))[0][0]
        dead = self._browse("select count(*) from dead_letters where (?1 is null or topic = ?1)",
                           (topic,))[0][0]
        return {"delayed": delayed, "pending": pending, "delivered": retained - pending, "dead": dead}
