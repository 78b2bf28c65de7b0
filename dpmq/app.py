"""The application factory: ``create_app(settings)`` builds a Flask app with its own broker."""

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from . import config
from .broker import Broker
from .errors import DPMQError, Unavailable
from .views import console, consumer, producer, reply

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
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": settings.server.pingInterval or None,
        "max_message_size": 65536,
    }
    broker = Broker(settings)
    app.extensions["dpmq"] = broker
    app.register_blueprint(producer.bp)
    app.register_blueprint(consumer.bp)
    app.register_blueprint(console.bp)

    @app.errorhandler(DPMQError)
    def dpmq_error(exc):
        response, status = reply(str(exc), code=-1, status=exc.status)
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc):
        text = exc.description or exc.name
        if exc.code == 413:
            text = (f"the request body is larger than mq.maxBodyBytes ({settings.mq.maxBodyBytes}"
                    " bytes)")
        return reply(text, code=-1, status=exc.code)

    if start:
        broker.start()
    return app
