"""gunicorn configuration for ``gunicorn -c python:dpmq.gunicorn_conf wsgi:app``.

Reads the same ``application.yaml`` (or ``$DPMQ_CONFIG``) as the app, so that the bind address,
DPMQ's worker class and the graceful-stop hook always match the broker's settings.
"""

from dpmq import config as _config
from dpmq.serving.server import gunicorn_options as _options

globals().update(_options(_config.load()))
