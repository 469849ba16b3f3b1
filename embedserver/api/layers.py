"""The HTTP layers every serving process puts in front of its routes: CORS, request metrics and the headers
every answer carries, the Host check, API keys, body limits, and the embedding routes' fast lane. Shared by
the single-process app and the front-end processes (HTTP_WORKERS); they wrap the framework from outside
(embedserver/api/app.py)."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from embedserver.api.body import RequestBody
from embedserver.api.fast_lane import FastLane
from embedserver.api.guards import ApiKeys
from embedserver.api.hosts import AllowedHosts, allowed_hosts
from embedserver.api.request_metrics import RequestMetrics
from embedserver.metrics import HttpMetrics
from embedserver.settings import Settings


def http_layers(framework: ASGIApp, settings: Settings, metrics: HttpMetrics) -> ASGIApp:
    """The layers around `framework`, outermost first: CORS, request metrics (with the headers every answer
    carries; so refusals are counted too), the Host check, API keys, body, lane."""
    app = FastLane(framework) if settings.fast_lane else framework
    app = RequestBody(app, max_bytes=settings.max_body_bytes, metrics=metrics)
    if settings.api_key:
        open_paths = {"/health", "/ready"} | (set() if settings.metrics_require_key else {"/metrics"})
        app = ApiKeys(app, keys=settings.api_key, open_paths=open_paths)
    app = AllowedHosts(app, hosts=allowed_hosts(settings.allowed_hosts, settings.host))
    app = RequestMetrics(app, metrics=metrics, access_log=settings.access_log)
    if settings.enable_cors:
        app = CORSMiddleware(
            app,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
