# gunicorn reads this file when started from this folder: `gunicorn wsgi:app` then runs DPMQ with
# DPMQ's own worker class (dpmq/serving/), its bind address and a graceful stop.
from dpmq.gunicorn_conf import *  # noqa: F401,F403
