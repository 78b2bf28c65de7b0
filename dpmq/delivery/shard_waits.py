"""What a delivery shard's thread sleeps on: a wake-up socket for posts, and the consumer sockets
that were not writable the last time it wrote to them.

A post wakes the shard only while it sleeps (``asleep``): a shard that is busy, or gathering
messages for a window, takes its inbox when it next looks, without a system call per post.
"""

import selectors
import socket


def drain(wake_r):
    """Empty a non-blocking wake-up socket: any number of wake-ups count as one."""
    try:
        while wake_r.recv(4096):
            pass
    except OSError:
        pass


class ShardWaits:
    def __init__(self):
        self.asleep = False             # set by the shard before it last looks at its inbox
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watched = set()           # members registered for writability

    def wake(self):
        """From any thread: end the shard's sleep, if it sleeps."""
        if self.asleep:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass

    def sleep(self, timeout):
        """Wait up to ``timeout`` seconds (a post ends it if ``asleep`` was set first); returns
        whether anything happened and the members whose sockets became writable."""
        events = self._selector.select(timeout)
        self.asleep = False
        writable = []
        for key, _ in events:
            if key.data is None:
                drain(self._wake_r)
            else:
                writable.append(key.data)
        return bool(events), writable

    def watch(self, member):
        """Wake the shard when ``member``'s socket can take more."""
        if member in self._watched:
            return
        self._watched.add(member)
        raw = member.conn.raw
        try:
            self._selector.register(raw, selectors.EVENT_WRITE, member)
        except KeyError:
            key = self._selector.get_key(raw)
            if key.data is not member:      # a stale entry for a reused descriptor
                self._selector.unregister(key.fileobj)
                self._selector.register(raw, selectors.EVENT_WRITE, member)
        except (ValueError, OSError):
            pass                            # the socket is closed; the route will remove it

    def unwatch(self, member):
        # Most flushes empty the buffer: the set answers "not watched" without asking the
        # selector, whose KeyError would format the socket's repr every time.
        if member not in self._watched:
            return
        self._watched.discard(member)
        try:
            key = self._selector.get_key(member.conn.raw)
        except (KeyError, ValueError):
            return
        if key.data is member:
            self._selector.unregister(key.fileobj)

    def close(self):
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
