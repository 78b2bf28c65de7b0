"""The README's promises that a test can hold it to."""

import pathlib
import re

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
