"""The ``dpmq`` command line: ``dpmq serve`` runs the broker under gunicorn."""

import argparse
import logging
import sys

from . import __version__, config
from .errors import DPMQError

EXAMPLES = """examples:
  dpmq serve                          serve ./application.yaml (or the defaults) on 127.0.0.1:8080
  dpmq serve --config prod.yaml --host 0.0.0.0 --port 80
  DPMQ_MQ_PUSHMESSAGESSPEED=0.5 dpmq serve   push one message every half second
"""


def _serve(args):
    overrides = {}
    for name in ("host", "port", "workers"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    settings = config.load(args.config)
    if overrides:
        settings = settings.replace(server=overrides)
    logging.basicConfig(level=settings.log.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _preflight(settings)
    logging.getLogger("dpmq").info(
        "DPMQ %s on http://%s:%d, engine %s (%s), config %s", __version__, settings.server.host,
        settings.server.port, settings.storage.engine, settings.storage.path, settings.source)
    from .server import serve
    serve(settings)
    return 0


def _preflight(settings):
    """Open the store once before forking, so a broken store stops start-up with a clear message."""
    from .storage import open_engine
    engine = open_engine(settings)
    engine.open(lambda records: None)
    engine.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dpmq", description="DPMQ, a small durable message queue.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dpmq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the broker under gunicorn",
                                epilog=EXAMPLES, formatter_class=argparse.RawTextHelpFormatter)
    serve.add_argument("--config", "-c", help="application.yaml to use (default: $DPMQ_CONFIG,"
                       " then ./application.yaml)")
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument("--workers", type=int, help="gunicorn workers (server.workers; 1 unless the"
                       " engine is shared)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _serve(args)
    except DPMQError as exc:
        print(f"dpmq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
