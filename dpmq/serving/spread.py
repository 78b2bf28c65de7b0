"""Spreading connections over gunicorn's workers.

Every worker waits on the one listening socket, and the kernel wakes them all for a new
connection: the first to call ``accept`` gets it, and that is mostly the worker that took the last
one. A producer keeps its connection, so two producers often land on the same worker, and the
second worker, with its own interpreter, has nothing to do. So each worker writes how
many connections it holds on a board the workers share (anonymous shared memory the master makes
before it forks them), and a worker that holds more than another leaves a new connection to the
others for :data:`DEFER`: the one holding fewest, woken as it was, takes it. If none has taken it by
then (busy, say) the deferring worker does; a worker that stops, or was killed, is not deferred to.
"""

import mmap
import os
import struct

#: How long a worker holding more connections than another leaves a new one to the others.
DEFER = 0.005
#: A worker defers to one holding fewer by more than a SLACK-th of that one's count: a few
#: connections are dealt out exactly, thousands arriving at once within that share, so that a
#: storm of arrivals is not slowed by workers pausing in turn while the other is busy with
#: handshakes.
SLACK = 8
#: Places on the board: more than any number of workers (a worker beyond them does not defer,
#: and no other defers to it).
SLOTS = 64
_SLOT = struct.Struct("=qq")        # the worker's pid (0: free), the connections it holds
_ALL = struct.Struct(f"={2 * SLOTS}q")


class Board:
    """The shared board; made in gunicorn's master (see :func:`hooks`), read and written by the
    workers it forks. Each worker writes only its own place; the values are a hint, and a torn or
    stale one at worst misplaces a connection."""

    def __init__(self):
        self._memory = mmap.mmap(-1, _ALL.size)     # MAP_SHARED: the forks see it
        self._owners = {}           # the master's: place -> the worker forked for it

    def reserve(self, live_workers, worker):
        """In the master, before ``worker`` is forked: a place no live worker holds, emptied."""
        taken = {slot for slot, owner in self._owners.items() if owner in live_workers}
        free = next((slot for slot in range(SLOTS) if slot not in taken), None)
        if free is not None:
            self._owners[free] = worker
            _SLOT.pack_into(self._memory, free * _SLOT.size, 0, 0)
        return free

    def read(self):
        """Every place's (pid, connections held), flattened: pid, held, pid, held..."""
        return _ALL.unpack(self._memory)

    def write(self, slot, pid, held):
        _SLOT.pack_into(self._memory, slot * _SLOT.size, pid, held)


class Seat:
    """One worker's place on the board, taken when it starts to run. Not thread-safe: the
    worker updates it under its lock."""

    def __init__(self, board, slot):
        self.board, self.slot, self.pid = board, slot, os.getpid()
        self.held = 0
        board.write(slot, self.pid, 0)

    def update(self, held):
        if held != self.held:
            self.held = held
            self.board.write(self.slot, self.pid, held)

    def ahead(self):
        """Whether another running worker holds fewer connections than this one (beyond the
        :data:`SLACK`)."""
        places = self.board.read()
        return any(pid and slot != self.slot and held + held // SLACK < self.held and _running(pid)
                   for slot, (pid, held) in enumerate(zip(places[::2], places[1::2])))

    def leave(self):
        """A stopping worker takes no more connections: the others no longer defer to it."""
        self.board.write(self.slot, 0, 0)


def _running(pid):
    """Whether the process is there: a worker killed with SIGKILL leaves its place as it was
    until the master forks its replacement."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def hooks():
    """The gunicorn settings that give each forked worker a place on a new board
    (``worker.dpmq_seat``: the board and the place, for :class:`Seat`). Made whatever
    ``server.workers`` says, as gunicorn's own ``--workers`` may ask for more; a lone worker
    finds nobody to defer to. With gunicorn's ``reuse_port`` each worker listens on a socket of
    its own, which no other worker could take a connection from: no places then."""
    board = Board()

    def pre_fork(server, worker):
        worker.dpmq_seat = None
        if server.cfg.reuse_port:
            return
        slot = board.reserve(set(server.WORKERS.values()), worker)
        if slot is None:
            server.log.warning("more than %d workers: the ones beyond share out no connections;"
                               " run fewer workers per broker process", SLOTS)
            return
        worker.dpmq_seat = (board, slot)

    return {"pre_fork": pre_fork}
