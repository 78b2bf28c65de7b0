"""The ``dpmq`` command line: serve the broker, publish, subscribe, watch, check a configuration.

Exit codes scripts can rely on: 0 success, 1 the broker refused (``code -1``, a refused consumer),
2 bad usage or configuration (a port already taken included), 3 the broker could not be reached.
When the reader of its output goes away (``dpmq subscribe t | head``), dpmq ends as Unix tools do:
quietly, killed by SIGPIPE (the shell reports 141).
"""

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
import urllib.request

from . import __version__, config
from .errors import ConfigError, DPMQError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8080"
#: Seconds ``dpmq subscribe`` tries to make its first connection before it exits 3: long enough for
#: a broker that is restarting, short enough that a wrong --url is reported while the user waits.
#: Once connected it reconnects for ever, as the Python client does.
SUBSCRIBE_FIRST_CONNECT_TIMEOUT = 3.0


class StdoutClosed(Exception):
    """Raised when the reader of dpmq's output has gone away (a closed pipe)."""

EXAMPLES = {
    None: """examples:
  dpmq serve                                   run the broker (./application.yaml)
  dpmq publish orders 'hello'                  publish one message
  printf 'a\\nb\\n' | dpmq publish orders -       one message per line of stdin
  dpmq subscribe orders --id me                print messages as JSON lines
  dpmq stats                                   topics and consumers, live
  dpmq check-config                            validate what dpmq serve would run

environment: DPMQ_URL (default http://127.0.0.1:8080), DPMQ_TOKEN; for serve and check-config,
  DPMQ_CONFIG (the file) and DPMQ_<SECTION>_<KEY> (one key, e.g. DPMQ_MQ_PUSHMESSAGESSPEED)
exit codes: 0 ok, 1 refused by the broker, 2 bad usage or config, 3 broker unreachable""",
    "serve": """examples:
  dpmq serve                                   serve ./application.yaml on 127.0.0.1:8080
  dpmq serve --config prod.yaml --host 0.0.0.0 --port 80
  DPMQ_MQ_PUSHMESSAGESSPEED=0.5 dpmq serve     push one message every half second""",
    "publish": """examples:
  dpmq publish orders 'hello'
  dpmq publish orders '{"id": 7}' --key customer-42 --delay 10
  dpmq publish prices '101.5' --ttl 30          not delivered at all if not delivered in 30 s
  seq 1000 | dpmq publish orders -             one message per line, sent in batches""",
    "subscribe": """examples:
  dpmq subscribe orders                        live messages only; the subscription ends with it
  dpmq subscribe orders --id audit             a durable subscription: resumes where it left off
  dpmq subscribe orders --group workers --ack  share the work with the group, ack each message
  dpmq subscribe orders --since beginning --count 10 | jq .MessageData
  dpmq subscribe orders --id audit --sse       the same, over Server-Sent Events (plain HTTP)
  dpmq subscribe orders --id nightly --pull --ack --count 500
                                               pull what is there, ack each batch once printed
gaps (messages a resuming subscription missed because they were gone) are reported on stderr.""",
    "stats": """examples:
  dpmq stats                                   refresh every 2 seconds until Ctrl-C
  dpmq stats --once                            print once (for scripts)""",
    "bench": """examples:
  dpmq bench                                   the six quick scenarios, on a broker it starts (sqlite)
  dpmq bench --scenario fanout,latency --engine memory
  dpmq bench --url http://10.0.0.5:8080 --scenario publish --json result.json
  dpmq bench --scenario idle --idle 10000      RSS per idle connection, CPU while idle
  dpmq bench --scenario fanout-wide --consumers 2000
  dpmq bench --scenario soak --soak-minutes 2""",
    "check-config": """examples:
  dpmq check-config                            what dpmq serve would run: its file and DPMQ_* variables
  dpmq check-config prod.yaml && echo valid""",
}


def _parser():
    parser = argparse.ArgumentParser(prog="dpmq", description="DPMQ, a small durable message queue.",
                                     epilog=EXAMPLES[None],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dpmq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if name not in ("serve", "check-config"):
            sub.add_argument("--url", default=os.environ.get("DPMQ_URL", DEFAULT_URL),
                             help="the broker (default: $DPMQ_URL or %(default)s)")
            sub.add_argument("--token", default=os.environ.get("DPMQ_TOKEN"),
                             help="auth token (default: $DPMQ_TOKEN)")
        return sub

    serve = command("serve", "run the broker under gunicorn")
    serve.add_argument("--config", "-c", help="application.yaml to use (default: $DPMQ_CONFIG,"
                       " then ./application.yaml)")
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument("--workers", type=int, help="gunicorn workers (server.workers)")

    publish = command("publish", "publish a message, or one per line of stdin with -")
    publish.add_argument("topic")
    publish.add_argument("data", help="the message, or - to read one message per line from stdin")
    publish.add_argument("--delay", type=float, help="seconds before it is pushed")
    publish.add_argument("--key", help="ordering key (one member of a group gets a key's messages)")
    publish.add_argument("--ttl", type=float, help="seconds after which a subscription that has"
                         " not had the message never gets it (mq.maxTtl at most)")

    subscribe = command("subscribe", "print messages as JSON, one per line")
    subscribe.add_argument("topic")
    subscribe.add_argument("--id", help="consumerId: a durable subscription, reuse it to resume where"
                           " you left off (default: a new id each run, whose subscription is"
                           " forgotten when dpmq exits)")
    subscribe.add_argument("--group", help="consumer group to share the messages with")
    subscribe.add_argument("--ack", action="store_true", help="ack each message once printed")
    subscribe.add_argument("--since", help="a MessageCode, or 'beginning', to replay from")
    subscribe.add_argument("--count", type=int, help="exit after this many messages")
    transport = subscribe.add_mutually_exclusive_group()
    transport.add_argument("--sse", action="store_true", help="receive over Server-Sent Events"
                           " instead of a WebSocket")
    transport.add_argument("--pull", action="store_true", help="pull with HTTP requests (long"
                           " polls) instead of holding a connection; needs --id or --group. With"
                           " --ack, each batch is acked once printed (unacked, it comes back after"
                           " mq.ackTimeout); without, a pull moves the subscription on")

    stats = command("stats", "a compact live view of the broker, its topics and consumers")
    stats.add_argument("--once", action="store_true", help="print once and exit")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")

    bench = command("bench", "measure a broker: fan-out, publish, batch, latency, idle consumers")
    bench.set_defaults(url=None)
    bench.add_argument("--scenario", default="all", help="all (fanout, topics, publish, batch,"
                       " latency, idle), or a comma-separated list of those and of the scenarios"
                       " at scale: fanout-wide, topics-wide, large, slow-mix, workers, soak")
    bench.add_argument("--engine", default="sqlite", choices=("sqlite", "memory", "redis"),
                       help="engine of the broker bench starts when no --url is given")
    bench.add_argument("--pid", type=int, help="the broker's process id, for RSS and CPU with --url")
    bench.add_argument("--idle", type=int, default=2000, help="idle consumers to connect")
    bench.add_argument("--idle-seconds", type=float, default=30.0,
                       help="how long the idle scenario measures CPU (default 30: past one ping"
                            " interval)")
    bench.add_argument("--messages", type=int, help="messages per scenario instead of its default")
    bench.add_argument("--producers", type=int,
                       help="producer processes per scenario instead of its default (2; latency 1)")
    bench.add_argument("--consumers", type=int, help="consumers per scenario instead of its default"
                       " (fanout-wide 5000, fanout 50...)")
    bench.add_argument("--topics", type=int, help="topics per scenario instead of its default"
                       " (topics 100, topics-wide 1000); the consumers are spread over them")
    bench.add_argument("--rate", type=float, help="messages/s of the rate-bound scenarios (latency"
                       " 200, fanout-wide 20, slow-mix 200; soak: half the measured capacity)")
    bench.add_argument("--soak-minutes", type=float, help="how long soak runs (default 30)")
    bench.add_argument("--sample-seconds", type=float,
                       help="soak samples the broker this often (default 60)")
    bench.add_argument("--workers", type=int, help="the workers scenario compares 1 worker process"
                       " with this many (default 2; redis engine)")
    bench.add_argument("--protocol", default="dpmq", choices=("dpmq", "socketio"),
                       help="consumers speak DPMQ's WebSocket, or Socket.IO to bench/socketio_peer.py")
    bench.add_argument("--json", help="also write the results to this JSON file")

    check = command("check-config", "validate the configuration dpmq serve would run (the file and"
                    " the DPMQ_* environment variables) and print it")
    check.add_argument("file", nargs="?", help="the file (default: $DPMQ_CONFIG, then"
                       " ./application.yaml, as for dpmq serve)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    from .client import ClientError, ConnectionFailed
    try:
        return COMMANDS[args.command](args)
    except StdoutClosed:
        return _end_as_unix_tools_do()
    except ConfigError as exc:
        print(f"dpmq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"dpmq: refused by the broker: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (ConnectionFailed, OSError) as exc:
        print(f"dpmq: cannot reach the broker at {getattr(args, 'url', '?')}: {exc}. Is it running"
              " there? (--url or DPMQ_URL)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except DPMQError as exc:
        print(f"dpmq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _print(text):
    """Write a line to stdout now; a reader that went away ends dpmq (see :class:`StdoutClosed`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise StdoutClosed() from None


def _end_as_unix_tools_do():
    """End quietly, as ``yes | head`` does: killed by SIGPIPE (the shell shows 141), with nothing on
    stderr. Called once the commands have closed their connections on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # Python's flush at exit must not complain either
    except OSError:
        pass
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    return 128 + 13


def _serve(args):
    overrides = {name: getattr(args, name) for name in ("host", "port", "workers")
                 if getattr(args, name) is not None}
    settings = config.load(args.config)
    if overrides:
        settings = settings.replace(server=overrides)
    _check_bind(settings.server.host, settings.server.port)
    logging.basicConfig(level=settings.log.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .storage import open_engine
    engine = open_engine(settings)      # fail before forking if the store is unusable
    engine.open(lambda records: None)
    engine.close()
    storage = settings.storage
    where = {"sqlite": storage.path, "memory": "nothing kept",
             "redis": f"{getattr(engine, 'where', '?')} prefix {storage.prefix}"}[storage.engine]
    logging.getLogger("dpmq").info(
        "DPMQ %s on http://%s:%d, engine %s (%s), config %s", __version__, settings.server.host,
        settings.server.port, storage.engine, where, settings.source)
    from .serving.server import serve
    serve(settings)
    return EXIT_OK


def _check_bind(host, port):
    """Refuse at once, naming the holder when it can, a port gunicorn could not bind: it would
    retry for five seconds after the banner, then exit 1 with the broker never up."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"server.host {host!r} is not an address DPMQ can serve on ({exc.strerror});"
                          " use an address of this machine, or 0.0.0.0 for all of them") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as gunicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use{_holder(port)}: stop that,"
                                  " or serve on another port (dpmq serve --port N, or server.port)"
                                  ) from None
            if exc.errno == errno.EACCES:
                raise ConfigError(f"port {port} on {host} needs privileges this user lacks (ports below"
                                  " 1024 need root or CAP_NET_BIND_SERVICE): choose a port above"
                                  " 1023 (dpmq serve --port N, or server.port)") from None
            raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror}; check server.host and"
                              " server.port") from None


def _holder(port):
    """`` by process PID (command)`` for the process listening on ``port``, as far as /proc tells
    (Linux; another user's processes show only their user); else ``""``."""
    listening = {}                      # socket inode -> uid
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        listening[f"socket:[{fields[9]}]"] = int(fields[7])
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    if not listening:
        return ""
    for pid in filter(str.isdigit, _listdir("/proc")):
        for fd in _listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                    return f" by process {pid} ({_command_of(pid)})"
            except OSError:
                continue
    try:
        import pwd
        return f" by a process of user {pwd.getpwuid(next(iter(listening.values()))).pw_name}"
    except (ImportError, KeyError):
        return ""


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _command_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0")
    except OSError:
        return "?"
    command = " ".join(" ".join(word.decode(errors="replace").split()) for word in words if word)
    return command if len(command) <= 80 else command[:77] + "..."


def _publish(args):
    from .client import Producer
    with Producer(args.url, token=args.token) as producer:
        if args.data != "-":
            _print(producer.send(args.topic, args.data, delay=args.delay, key=args.key,
                                 ttl=args.ttl))
            return EXIT_OK
        batch = []
        for line in sys.stdin:
            batch.append({"messageData": line.rstrip("\n"), "key": args.key} if args.key
                         else line.rstrip("\n"))
            if len(batch) == 100:
                _print("\n".join(producer.send_batch(args.topic, batch, delay=args.delay,
                                                     ttl=args.ttl)))
                batch = []
        if batch:
            _print("\n".join(producer.send_batch(args.topic, batch, delay=args.delay,
                                                 ttl=args.ttl)))
    return EXIT_OK


def _subscribe(args):
    """Without --id (or --group) the consumerId is made up and its subscription ephemeral: a
    durable one would stay in the store, never read again, after every run."""
    from .client import Consumer
    if args.pull:
        return _subscribe_by_pulling(args)
    consumer_id = args.id or f"cli-{os.getpid()}-{int(time.time())}"
    received = 0
    with Consumer(args.url, args.topic, consumer_id, group=args.group, ack=args.ack,
                  since=args.since, token=args.token, durable=bool(args.id or args.group),
                  first_connect_timeout=SUBSCRIBE_FIRST_CONNECT_TIMEOUT,
                  transport="sse" if args.sse else "websocket", on_gap=_report_gap) as consumer:
        for message in consumer:
            _print(json.dumps(message.raw, ensure_ascii=False))
            received += 1
            if args.count and received >= args.count:
                if args.ack:
                    consumer.ack(message)       # the loop ends before the automatic ack would
                break
    return EXIT_OK


#: The longest one pull of ``dpmq subscribe --pull`` waits for messages (the broker may cap it lower).
PULL_WAIT = 20
PULL_MAX = 100


def _subscribe_by_pulling(args):
    """``dpmq subscribe --pull``: long polls on the durable subscription of --id or --group. With
    --ack a batch is acked once all of it is printed; without, each pull moves the cursor."""
    from .client import PullConsumer
    if not (args.id or args.group):
        raise DPMQError("--pull needs --id or --group: a pull reads a durable subscription, and a"
                        " made-up id would leave one behind after every run")
    if args.since:
        raise DPMQError("--since does not apply to --pull: start the subscription once with"
                        " dpmq subscribe --id ID --since ..., then pull from it")
    received = 0
    with PullConsumer(args.url, args.topic, args.id, group=args.group, auto_ack=not args.ack,
                      token=args.token, on_gap=_report_gap) as puller:
        while not args.count or received < args.count:
            batch = puller.pull(max=min(PULL_MAX, args.count - received) if args.count
                                else PULL_MAX, wait=PULL_WAIT)
            for message in batch:
                _print(json.dumps(message.raw, ensure_ascii=False))
            received += len(batch)
            if args.ack and batch:
                puller.ack(batch)
    return EXIT_OK


def _report_gap(gap):
    """A gap goes to stderr, so that stdout stays one message per line."""
    print(f"dpmq: missed {gap.missed} messages of {gap.topic} ({gap.reason}) after"
          f" {gap.after or 'the start'}; resuming at {gap.resume}", file=sys.stderr, flush=True)


def _get(url, path, token):
    request = urllib.request.Request(url.rstrip("/") + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["data"]


def _stats(args):
    while True:
        ping = _get(args.url, "/Console/Ping", args.token)
        consumers = _get(args.url, "/Console/GetConsumers", args.token)
        lines = [f"DPMQ {args.url}  engine {ping['engine']}  up {ping['uptime']:.0f}s  "
                 f"buffer {ping['bufferUsed']}/{ping['bufferCapacity']}  awaiting paced push "
                 f"{ping['awaitingPacedPush']}  in flight {ping['inFlight']}",
                 f"published {ping['published']}  pushed {ping['pushed']}  failed {ping['failed']}"
                 f"  dead {ping['deadLettered']}",
                 f"{'TOPIC':24} {'CONSUMER':20} {'GROUP':12} {'DELIVERED':>9} {'PENDING':>8}  FROM"]
        for c in sorted(consumers, key=lambda c: (c["topic"], c["consumerId"])):
            lines.append(f"{c['topic'][:24]:24} {c['consumerId'][:20]:20} {(c['group'] or '-')[:12]:12}"
                         f" {c['delivered']:>9} {c['pending']:>8}  {c['remoteAddr']}")
        if not consumers:
            lines.append("(no consumers connected)")
        if args.once:
            _print("\n".join(lines))
            return EXIT_OK
        _print("\x1b[H\x1b[2J" + "\n".join(lines))
        time.sleep(args.interval)


def _check_config(args):
    """Check what ``dpmq serve`` would run, environment included: a file that is valid alone can
    still be overridden into an invalid configuration, or by a misspelt variable."""
    path = args.file or config.default_path(os.environ)
    if path and not os.path.exists(path):
        raise ConfigError(f"no such file: {path}")
    settings = config.load(path)
    _print(json.dumps(settings.as_dict(redact=True), indent=2))
    overrides = sorted(name.upper() for name in os.environ if config.environment_key(name))
    print(f"{path or '(no file: the defaults)'}"
          f"{' with ' + ', '.join(overrides) if overrides else ''}: valid", file=sys.stderr)
    return EXIT_OK


def _bench(args):
    from .bench.run import main as bench
    return bench(args)


COMMANDS = {"serve": _serve, "publish": _publish, "subscribe": _subscribe, "stats": _stats,
            "bench": _bench, "check-config": _check_config}


if __name__ == "__main__":
    sys.exit(main())
