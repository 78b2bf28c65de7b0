"""Probes for load balancers and orchestrators, and the API document; open even when auth is on."""

from flask import Blueprint, jsonify

from .. import openapi
from ..errors import StoreError
from . import broker, reply

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive and serving HTTP."""
    return reply("ok")


@bp.get("/readyz")
def readyz():
    """The broker accepts messages: not shutting down, and the store can be read and written."""
    b = broker()
    if not b.accepting:
        return reply("shutting down", code=-1, status=503)
    try:
        b.engine.ping()
    except StoreError as exc:
        return reply(f"store unavailable: {exc}", code=-1, status=503)
    return reply("ok", data={"engine": b.engine.name})


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3 document of this broker's HTTP API, with its limits."""
    return jsonify(openapi.document(broker().settings))
