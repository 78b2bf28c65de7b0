"""The web console page. The page itself is public; everything it shows comes from the console
API, which asks for an admin token when auth is on (the page then asks the person for one)."""

from importlib import resources

from flask import Blueprint, Response, redirect

bp = Blueprint("web", __name__)


@bp.get("/")
def root():
    return redirect("/Console/")


@bp.get("/Console/")
def console_page():
    page = resources.files("dpmq").joinpath("console/index.html").read_bytes()
    response = Response(page, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
