"""DPMQ's publish paths side by side: which of them earns its keep.

A publish reaches the broker one of three ways: DPMQ's worker answers a plain one itself from the
request it has already framed (``dpmq serve``, the default); with an access log or a request hook
configured, or under another WSGI server, gunicorn builds the request and the WSGI publish fast
path (``dpmq/views/fastpath.py``) answers it without Flask; anything else goes through Flask to
``views/producer.py``. This runs ``dpmq bench`` scenarios against each, and against gunicorn's
own gthread worker, with gunicorn's Python parser or its C parser (``http_parser = "fast"``, which
needs the ``gunicorn_h1c`` package)::

    python bench/publish_paths.py --engine sqlite,memory --scenario publish,fanout,latency

The variants take turns scenario by scenario, each on a fresh broker and store; with
``--rounds N`` every one is measured N times. Compare the broker's CPU per message first: it moves
least when the machine is busy.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from dpmq.bench.run import run_scenario

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: name -> (gunicorn worker, what answers a publish)
VARIANTS = {
    "dpmq-direct": ("dpmq", "direct"),
    "dpmq-wsgi": ("dpmq", "wsgi"),
    "dpmq-flask": ("dpmq", "flask"),
    "gthread-wsgi": ("gthread", "wsgi"),
    "gthread-flask": ("gthread", "flask"),
}
#: gunicorn's configuration for one variant, read from the environment the runner sets.
CONFIG = '''
# Every name here that is not a gunicorn setting starts with an underscore: gunicorn reads the rest.
import os
from dpmq import config as _config
from dpmq.serving.server import gunicorn_options as _options, post_worker_init as _post_init

_settings = _options(_config.load())
if os.environ["PP_WORKER"] == "gthread":
    _settings.update(worker_class="gthread", threads=200)   # a thread per consumer, and producers
_settings["http_parser"] = os.environ["PP_PARSER"]
_path = os.environ["PP_PATH"]
if _path != "direct":
    def _hook(worker, req):             # a hook: DPMQ's worker then serves through gunicorn
        pass
    _settings["pre_request"] = _hook


def _post_worker_init(worker):
    if _path == "flask":                # without the WSGI publish fast path
        worker.wsgi.wsgi_app = worker.wsgi.extensions["dpmq_fastpath"].flask_wsgi
    _post_init(worker)


_settings["post_worker_init"] = _post_worker_init
globals().update(_settings)
'''


def _port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(folder, engine, worker, path, parser):
    port = _port()
    conf = os.path.join(folder, "gunicorn_conf.py")
    with open(conf, "w") as handle:
        handle.write(CONFIG)
    open(os.path.join(folder, "none.yaml"), "w").close()
    env = dict(os.environ, DPMQ_SERVER_PORT=str(port), DPMQ_STORAGE_ENGINE=engine,
               DPMQ_STORAGE_PATH=os.path.join(folder, "bench.db"), DPMQ_LOG_LEVEL="WARNING",
               DPMQ_MQ_MESSAGECHANBUFFER="10000", DPMQ_CONFIG=os.path.join(folder, "none.yaml"),
               PP_WORKER=worker, PP_PATH=path, PP_PARSER=parser)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", conf, "wsgi:app"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the {worker}/{path} broker exited; run gunicorn -c {conf}"
                                   " wsgi:app by hand to see why") from None
            time.sleep(0.1)
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as handle:
        return proc, url, int(handle.read().split()[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="sqlite,memory")
    parser.add_argument("--scenario", default="publish,fanout,latency")
    parser.add_argument("--variant", default=",".join(VARIANTS),
                        help=f"a comma-separated list of: {', '.join(VARIANTS)}")
    parser.add_argument("--http-parser", default="python", choices=("python", "fast", "auto"),
                        help="gunicorn's http_parser setting (fast needs gunicorn_h1c)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = []
    for round_ in range(args.rounds):
        for engine in args.engine.split(","):
            for scenario in args.scenario.split(","):
                for name in args.variant.split(","):
                    worker, path = VARIANTS[name]
                    with tempfile.TemporaryDirectory(prefix="dpmq-paths-") as folder:
                        proc, url, pid = _start(folder, engine, worker, path, args.http_parser)
                        try:
                            result = run_scenario(scenario, url, pid=pid, progress=lambda *a: None)
                        finally:
                            os.killpg(proc.pid, 15)
                            proc.wait(30)
                    row = {"round": round_ + 1, "engine": engine, "scenario": scenario,
                           "variant": name, "parser": args.http_parser,
                           **{key: result.get(key) for key in (
                               "publishPerSecond", "deliveredPerSecond", "brokerCpuUsPerMessage",
                               "latencyP50Ms", "latencyP99Ms", "lost")}}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
