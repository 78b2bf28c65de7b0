"""DPMQ's gunicorn worker: gthread, with keep-alive requests served on the thread that is warm.

In gthread, every request of a keep-alive connection makes two trips between threads: the main
thread's poller sees the socket readable and hands it to a pool thread, which hands it back when
the response is written. For a producer publishing one message after another that hand-off is
most of the cost of a publish. This worker keeps the connection on its pool thread for a few
milliseconds after each response: if the next request arrives by then (a busy producer's does) it
is served at once, a plain publish straight from the socket's bytes (:mod:`dpmq.warm_publish`),
anything else by gunicorn; if not, the connection goes back to the poller as usual, so idle
keep-alive connections still cost no thread.
"""

import select

from gunicorn.workers.gthread import ThreadWorker

from .warm_publish import WarmPublish

#: How long a pool thread waits for the next request of a keep-alive connection.
LINGER = 0.005


class DPMQWorker(ThreadWorker):
    def load_wsgi(self):
        super().load_wsgi()
        self.warm = WarmPublish(self.wsgi.extensions["dpmq_fastpath"], body_wait=self.cfg.keepalive,
                                max_fields=self.cfg.limit_request_fields,
                                max_field_size=self.cfg.limit_request_field_size)

    def handle(self, conn):
        if conn.initialized and not conn.is_http2 and not conn.parser.unreader.buf.getvalue():
            conn.sock.setblocking(True)         # back from the poller, which saw it readable
            keepalive = self._serve_warm(conn)
        else:
            keepalive = super().handle(conn)
        while keepalive is True and self.alive and conn.initialized and not conn.is_http2:
            if conn.parser.unreader.buf.getvalue():     # pipelined, already read by gunicorn
                keepalive = super().handle(conn)
                continue
            try:
                readable, _, _ = select.select([conn.sock], [], [], LINGER)
            except (OSError, ValueError):
                return False
            if not readable:
                break
            keepalive = self._serve_warm(conn)
        return keepalive

    def _serve_warm(self, conn):
        """Serve the request that just arrived: a plain publish here, anything else by gunicorn
        (what was read is put back in front of its reader first)."""
        try:
            served, data = self.warm.serve(conn.sock, conn.client[0] if conn.client else None)
        except OSError:
            return False
        if served is not None:
            return served
        conn.parser.unreader.unread(data)
        return super().handle(conn)
