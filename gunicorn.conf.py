# gunicorn reads this file when started from this folder: `gunicorn wsgi:app` then runs DPMQ with
# gthread workers, enough threads for server.maxConsumers, and a graceful stop.
from dpmq.gunicorn_conf import *  # noqa: F401,F403
