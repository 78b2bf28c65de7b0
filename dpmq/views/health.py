"""Probes for load balancers and orchestrators, and the API document; open even when auth is on.

``/readyz`` means "a publish sent here now would be stored": the broker accepts, its store answers
and can be written, and it has room. The engine's probe alone cannot say the last part: it
rewrites one small row, which a store that cannot grow still manages (a SQLite file at its size
limit; a full disk whose write-ahead log still has room for one page), while every publish gets
503. So readyz also looks at what the publishes themselves met (:class:`StoreWrites`) and, for a
SQLite store, at the free space of its file system.
"""

import os
import threading
import time

from flask import Blueprint, current_app, jsonify

from .. import openapi
from ..errors import StoreError
from . import broker, reply

bp = Blueprint("health", __name__)

#: Seconds a failed publish keeps readyz failing when no publish comes to succeed.
FAILED_WRITE_HOLD = 5.0


class StoreWrites:
    """Whether the last publish that reached the store was stored.

    Written by every publishing thread (the producer views and the fast path), read by readyz.
    A failure counts until a publish succeeds, or for ``hold`` seconds after the last failure:
    a broker a load balancer took out of rotation gets no publish that could succeed, so after
    a while readyz lets traffic back to try (and fails again at once if it still cannot store).
    """

    def __init__(self, hold=FAILED_WRITE_HOLD, clock=time.monotonic):
        self.hold = hold
        self.clock = clock
        self._lock = threading.Lock()
        self._failure = None        # (when, the StoreError) of the last failure since a success

    def failed(self, exc):
        with self._lock:
            self._failure = (self.clock(), exc)

    def succeeded(self):
        if self._failure is not None:       # the common case reads one attribute, no lock
            with self._lock:
                self._failure = None

    def problem(self):
        """Why publishes are failing now, or None."""
        with self._lock:
            failure = self._failure
        if failure is None:
            return None
        age = self.clock() - failure[0]
        if age > self.hold:
            return None
        return (f"the last publish could not be stored ({failure[1]}), {age:.0f} s ago, and none"
                " has been since")


def store_writes(app):
    """The :class:`StoreWrites` of ``app``'s broker."""
    return app.extensions["dpmq_store_writes"]


def _room(settings):
    """Why a SQLite store has no room for one more message of the largest size, or None."""
    if settings.storage.engine != "sqlite":
        return None
    folder = os.path.dirname(os.path.abspath(settings.storage.path))
    try:
        disk = os.statvfs(folder)
    except OSError as exc:
        return f"cannot see the store's folder {folder}: {exc}"
    free, needed = disk.f_bavail * disk.f_frsize, settings.mq.maxMessageBytes
    if free < needed:
        return (f"the store's file system ({folder}) has {free} bytes free, less than one message"
                f" of mq.maxMessageBytes ({needed} bytes); free disk space there")
    return None


@bp.get("/healthz")
def healthz():
    """The process is alive and serving HTTP."""
    return reply("ok")


@bp.get("/readyz")
def readyz():
    """The broker accepts messages: not shutting down, and the store reachable, writable, with
    room; 503 with the reason otherwise."""
    b = broker()
    if not b.accepting:
        return reply("shutting down", code=-1, status=503)
    try:
        b.engine.ping()
    except StoreError as exc:
        return reply(f"store unavailable: {exc}", code=-1, status=503)
    problem = _room(b.settings) or store_writes(current_app).problem()
    if problem:
        return reply(f"store not accepting: {problem}", code=-1, status=503)
    return reply("ok", data={"engine": b.engine.name})


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3 document of this broker's HTTP API, with its limits."""
    return jsonify(openapi.document(broker().settings))
