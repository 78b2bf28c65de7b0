"""Running DPMQ under gunicorn, the production server of the design card.

The worker class is DPMQ's own (:mod:`dpmq.serving`): threads like gthread, ``server.httpThreads``
of them for producers and the console, and one per consumer while it is connected; but a request is
read whole before a thread is given to it, so slow clients cannot take the threads. The broker
refuses consumer number ``maxConsumers + 1`` at once with close code 1013.

gunicorn gives a worker no hook for SIGTERM, so :func:`post_worker_init` installs one: the broker
stops accepting, pushes what is buffered and closes consumers with 1001 while the worker finishes
its in-flight requests, and the worker waits for the broker before it exits.
"""

import logging
import signal
import threading

from . import spread

log = logging.getLogger(__name__)


def gunicorn_options(settings):
    """The gunicorn settings that run ``settings`` correctly."""
    server = settings.server
    return {
        "bind": [f"{server.host}:{server.port}"],
        "workers": server.workers,
        "worker_class": "dpmq.serving.worker.DPMQWorker",
        "keepalive": 5,
        "timeout": 30,
        "graceful_timeout": int(server.shutdownTimeout) + 5,
        "loglevel": settings.log.level.lower(),
        "post_worker_init": post_worker_init,
        "control_socket_disable": True,     # gunicorn >= 25: no shared control socket in $HOME
        **spread.hooks(),
    }


def post_worker_init(worker):
    """Stop the broker gracefully on SIGTERM, SIGINT and SIGQUIT, then let the worker exit."""
    broker = worker.wsgi.extensions["dpmq"]
    stopper = threading.Thread(target=broker.stop, name="dpmq-stop", daemon=True)
    begun = []

    def begin_stop(signum, frame):
        # This runs on the main thread between two bytecodes, and a second signal can run it again
        # inside the first (systemd's stop sends SIGTERM to the worker, and the master forwards its
        # own): so no lock, which the inner call would wait for for ever, and the flag goes first.
        # The worker stops keeping connections alive before the broker starts refusing, so that
        # no refusal says "keep-alive".
        worker.handle_exit(signum, frame)
        if not begun:
            begun.append(signum)
            log.info("signal %d: stopping gracefully", signum)
            try:
                stopper.start()
            except RuntimeError:    # an inner call started it between the check and the flag
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, begin_stop)
    signal.siginterrupt(signal.SIGTERM, False)
    run = worker.run

    def run_then_stop():
        try:
            run()
        finally:
            if stopper.ident is None:
                broker.stop()
            else:
                stopper.join(broker.settings.server.shutdownTimeout + 2)

    worker.run = run_then_stop


def serve(settings):
    """Run the broker under gunicorn in this process (the master); returns when it exits."""
    from gunicorn.app.base import BaseApplication

    from ..app import create_app

    class DPMQApplication(BaseApplication):
        def load_config(self):
            for key, value in gunicorn_options(settings).items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    DPMQApplication().run()
