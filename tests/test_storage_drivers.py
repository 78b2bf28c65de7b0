"""An engine's driver is imported only when that engine is chosen: a broker on SQLite or memory
runs without the redis package loaded (setup.cfg installs it, but an optional driver must stay
optional in the code)."""

import subprocess
import sys

import pytest

# Run in a fresh interpreter: this one has imported redis already (the tests of the redis engine).
PROBE = """
import sys
from dpmq import config
engine, path = sys.argv[1], sys.argv[2]
settings = config.build({"storage": {"engine": engine, "path": path}, "server": {"pingInterval": 0}})
if engine == "redis":       # built, not opened: no Redis needed to see what it imports
    from dpmq.storage import open_engine
    open_engine(settings)
else:
    from dpmq.app import create_app
    create_app(settings).extensions["dpmq"].stop(timeout=5)
print("redis" in sys.modules)
"""


def _imports_redis(engine, tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE, engine, str(tmp_path / "dpmq.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("engine", ["sqlite", "memory"])
def test_a_broker_on_a_local_engine_never_imports_redis(engine, tmp_path):
    assert not _imports_redis(engine, tmp_path)


def test_the_redis_engine_does_import_it(tmp_path):
    """The probe sees the import when there is one."""
    assert _imports_redis("redis", tmp_path)
