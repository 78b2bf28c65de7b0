"""The library interfaces DPMQ's serving relies on, checked by name so that an upgrade that changes
one fails here, saying which library, which version and what changed, rather than as a broker
that stops answering."""

import inspect
from importlib.metadata import version

import pytest
from gunicorn import http
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.wsgi import Response
from gunicorn.workers.base import Worker

GUNICORN = f"gunicorn {version('gunicorn')}"


def _parameters(function):
    return list(inspect.signature(function).parameters)


def test_gunicorn_parses_a_request_from_bytes_and_builds_its_environ():
    """dpmq.serving.threads: RequestParser(cfg, iterable, peer) and wsgi.create(req, sock, client,
    server, cfg), as gunicorn's own sync worker uses them."""
    cfg = Config()
    data = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    try:
        req = next(http.RequestParser(cfg, iter([data]), ("127.0.0.1", 5)))
    except Exception as exc:  # noqa: BLE001 - the message is the point
        pytest.fail(f"{GUNICORN}: RequestParser(cfg, iter([bytes]), addr) no longer parses: {exc!r}")
    assert (req.method, req.path, req.body.read()) == ("POST", "/p", b"abc"), GUNICORN
    assert _parameters(wsgi.create)[:5] == ["req", "sock", "client", "server", "cfg"], \
        f"{GUNICORN}: wsgi.create's parameters changed to {_parameters(wsgi.create)}"
    for name in ("start_response", "write", "write_file", "close", "should_close", "force_close"):
        assert callable(getattr(Response, name, None)), f"{GUNICORN}: Response.{name} is gone"


def test_gunicorn_workers_offer_what_dpmqs_worker_builds_on():
    """dpmq.serving.worker: a subclass of the base Worker, with its documented run/notify/alive,
    handle_error for gunicorn's own 400/500 pages, and the hook settings it compares."""
    for name in ("run", "notify", "init_process", "handle_error", "handle_exit", "load_wsgi"):
        assert callable(getattr(Worker, name, None)), f"{GUNICORN}: Worker.{name} is gone"
    assert _parameters(Worker.handle_error)[1:] == ["req", "client", "addr", "exc"], \
        f"{GUNICORN}: Worker.handle_error's parameters changed"
    settings = Config().settings
    for name in ("pre_request", "post_request", "keepalive", "accesslog", "max_requests",
                 "graceful_timeout", "post_worker_init"):
        assert name in settings, f"{GUNICORN}: the setting {name} is gone"
    assert settings["pre_request"].value is settings["pre_request"].default, \
        f"{GUNICORN}: an unset hook no longer keeps its default object"
