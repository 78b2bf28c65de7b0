"""DPMQ's gunicorn worker: gthread, with keep-alive requests served on the thread that is warm.

In gthread, every request of a keep-alive connection makes two trips between threads: the main
thread's poller sees the socket readable and hands it to a pool thread, which hands it back when
the response is written. For a producer publishing one message after another that hand-off is
most of the cost of a publish. This worker keeps the connection on its pool thread for a few
milliseconds after each response: if the next request arrives by then (a busy producer's does) it
is served at once; if not, the connection goes back to the poller as usual, so idle keep-alive
connections still cost no thread.
"""

import select

from gunicorn.workers.gthread import ThreadWorker

#: How long a pool thread waits for the next request of a keep-alive connection.
LINGER = 0.005


class DPMQWorker(ThreadWorker):
    def handle(self, conn):
        keepalive = super().handle(conn)
        while keepalive is True and self.alive and conn.initialized and not conn.is_http2:
            if not conn.parser.unreader.buf.getvalue():
                try:
                    readable, _, _ = select.select([conn.sock], [], [], LINGER)
                except (OSError, ValueError):
                    return False
                if not readable:
                    break
            keepalive = super().handle(conn)
        return keepalive
