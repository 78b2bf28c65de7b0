"""WSGI entry point: ``gunicorn -c python:dpmq.gunicorn_conf wsgi:app`` (``dpmq serve`` does this)."""

import logging

from dpmq import config
from dpmq.app import create_app

settings = config.load()
logging.basicConfig(level=settings.log.level.upper(),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app(settings)
