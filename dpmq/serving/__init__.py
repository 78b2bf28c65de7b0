"""How DPMQ serves HTTP under gunicorn.

:mod:`.worker` is the gunicorn worker class: one event-loop thread reads every connection until a
whole request is in (:mod:`.framing` says where a request ends, :mod:`.connection` holds what was
read), then :mod:`.threads` serves it on a thread, through gunicorn and the WSGI application.
"""
