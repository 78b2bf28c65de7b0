"""``GET /metrics`` in the Prometheus text format (admin only when auth is on)."""

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from . import authorize, broker

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    authorize("admin")
    return Response(broker().metrics.export(), content_type=CONTENT_TYPE_LATEST)
