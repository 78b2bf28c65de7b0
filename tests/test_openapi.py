"""The OpenAPI document is true: it lists every HTTP route, and schemathesis finds no reply that
breaks it and no 5xx, fuzzing a live broker."""

import re
import subprocess
import sys

from dpmq.openapi import document

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
#: Not part of the API: the console's pages, the document itself, and the route that only refuses
#: a consumer path with too many parts (naming what is wrong with it).
UNDOCUMENTED = {"/", "/Console/", "/openapi.json", "/static/<path:filename>",
                "/ConsumersConn/<path:rest>"}


def _openapi_path(rule):
    """Flask's ``/a/<name>`` (or ``<converter:name>``) as OpenAPI writes it: ``/a/{name}``."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_every_http_route_is_documented(broker):
    paths = document(broker.settings)["paths"]
    for rule in broker.app.url_map.iter_rules():
        if rule.websocket or rule.rule in UNDOCUMENTED:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths.get(_openapi_path(rule.rule), {}), \
                f"{method} {rule.rule} is undocumented"
    served = broker.http.get(broker.url + "/openapi.json").json()
    assert served["openapi"].startswith("3.") and set(served["paths"]) == set(paths)


def test_schemathesis_finds_no_reply_outside_the_document(make_broker, tmp_path):
    # Pulls that wait at most 1 s (mq.maxPullWait), so that a fuzzed long poll ends well within
    # the request timeout.
    running = make_broker("sqlite", mq={"publishTimeout": 0.2, "maxPullWait": 1})
    result = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run",
                             running.url + "/openapi.json", "--checks", CHECKS,
                             "--max-examples", "25", "--request-timeout", "10", "--no-color"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
