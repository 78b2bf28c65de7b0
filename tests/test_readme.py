"""The README's promises that a test can hold it to, and its consumer examples run as written."""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from helpers import wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_configuration_table_lists_every_key():
    from dpmq.config import SCHEMA
    readme = (ROOT / "README.md").read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert re.search(rf"`{section}\.{key}`|`{section}\.\w+`, `{section}\.{key}`", readme), \
                f"{section}.{key} is missing from the README's configuration table"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "## Test it" in readme and "pytest" in readme.split("## Test it")[1].split("```")[1]
    assert "## Test it" in (ROOT / ".ci" / "run").read_text()


def consumer_examples():
    """The README's Python blocks that consume: (id, code, topic)."""
    readme = (ROOT / "README.md").read_text()
    examples = []
    for match in re.finditer(r"```python\n(.*?)```", readme, re.S):
        code = match.group(1)
        if not re.search(r"^\s*for \w+ in ", code, re.M):
            continue
        heading = re.findall(r"^## (.+)$", readme[:match.start()], re.M)[-1]
        topic = re.search(r"ConsumersConn/([^/]+)/|Consumer\([^,]+, \"([^\"]+)\"", code)
        examples.append(pytest.param(code, topic.group(1) or topic.group(2),
                                     id=f"{heading}-{len(examples)}"))
    return examples


def test_the_readme_shows_consumers_that_work():
    codes = [example.values[0] for example in consumer_examples()]
    assert len(codes) >= 4, "the consumer examples of Consume, the Python client, Delivery options"
    assert "from dpmq.client import Consumer" in codes[0], "DPMQ's own client comes first"
    for code in codes:
        assert "simple_websocket" not in code, "a bare simple_websocket.Client can hold a message back"


@pytest.mark.parametrize("code, topic", consumer_examples())
def test_a_readme_consumer_receives_and_its_program_ends_after_break(make_broker, tmp_path, code,
                                                                    topic):
    for module in re.findall(r"^(?:from|import) (\w+)", code, re.M):
        _needs(module)
    running = make_broker("memory")
    code = code.replace("127.0.0.1:8080", f"127.0.0.1:{running.port}")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: [c for c in running.get("/Console/GetConsumers")["data"]
                          if c["topic"] == topic], what=f"the example's consumer on {topic}")
        running.publish(topic, "hello")
        running.publish(topic, "stop")
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.split()[:2] == ["hello", "stop"] or out.split()[:3] == ["hello", "0", "stop"], out


def _needs(module):
    """A library a README example uses must be installed for its test (the test extra); CI fails
    without it rather than skip the example."""
    try:
        importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed: a README example uses it; add it to the test"
                        " extra in setup.cfg")
        pytest.skip(f"{module} is not installed (pip install {module})")
