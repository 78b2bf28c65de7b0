"""The application factory: ``create_app(settings)`` builds a Flask app with its own broker."""

import json
import logging

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from . import config
from .auth import Auth
from .broker.broker import Broker
from .errors import DPMQError
from .ratelimit import RateLimiter
from .views import console, consumer, health, metrics, producer, pull, reply, web
from .views.fastpath import PublishFastPath
from .views.health import StoreWrites

log = logging.getLogger(__name__)


def create_app(settings=None, start=True):
    """Build the app and its broker; ``settings`` defaults to :func:`dpmq.config.load`.

    The broker hangs off ``app.extensions["dpmq"]``; with ``start`` it is running on return.
    """
    settings = settings or config.load()
    app = Flask("dpmq")
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.config["MAX_CONTENT_LENGTH"] = settings.mq.maxBodyBytes
    # Werkzeug refuses a multipart text field over 500,000 bytes, with a 413 that could only be
    # blamed on the body. The body limit already bounds what a form holds in memory, as it does
    # for the other encodings, and validation names mq.maxMessageBytes: one limit, one message.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.mq.maxBodyBytes
    app.config["SOCK_SERVER_OPTIONS"] = {
        "max_message_size": 65536,
        "thread_class": consumer.NoReaderThread,    # the broker's inbound thread reads and pings
    }
    broker = Broker(settings)
    app.extensions["dpmq"] = broker
    app.extensions["dpmq_auth"] = Auth(settings.auth, broker.expiry)     # stopped with the broker
    app.extensions["dpmq_rate"] = RateLimiter(settings.mq.publishRate, settings.mq.publishBurst)
    app.extensions["dpmq_store_writes"] = StoreWrites()
    broker.engine.serve_reports(lambda question: broker.answer(question) if question else
                                console.process_report(broker, console.POSITIONS_TIMEOUT))
    for blueprint in (producer.bp, consumer.bp, pull.bp, console.bp, health.bp, metrics.bp,
                      web.bp):
        app.register_blueprint(blueprint)
    app.wsgi_app = app.extensions["dpmq_fastpath"] = PublishFastPath(app, app.wsgi_app)
    cors = frozenset(settings.server.corsOrigins)

    @app.after_request
    def allow_browser_producers(response):
        """CORS for the origins in server.corsOrigins ("*" for any), so pages can publish."""
        origin = request.headers.get("Origin")
        if origin and (origin in cors or "*" in cors):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
            response.vary.add("Origin")
        return response

    @app.errorhandler(DPMQError)
    def dpmq_error(exc):
        response, status = reply(str(exc), code=-1, status=exc.status)
        response.headers.extend(exc.headers())
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc):
        text = exc.description or exc.name
        if exc.code == 413:
            text = (f"the request body is larger than mq.maxBodyBytes ({settings.mq.maxBodyBytes}"
                    " bytes)")
        return reply(text, code=-1, status=exc.code)

    log.info("config source=%s settings=%s", settings.source,
             json.dumps(settings.as_dict(redact=True), separators=(",", ":")))
    if not settings.auth.enabled:
        log.warning("auth is off: anyone who can reach %s:%d may publish, consume and use the"
                    " console; set auth.enabled and tokens to lock it down",
                    settings.server.host, settings.server.port)
    if start:
        broker.start()
    return app
