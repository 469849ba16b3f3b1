"""The HTTP layers every serving process puts in front of its routes: CORS, request metrics, API keys, body
limits, and the embedding routes' fast lane. Shared by the single-process app and the front-end processes
(HTTP_WORKERS)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from embedserver.api.body import RequestBody
from embedserver.api.fast_lane import FastLane
from embedserver.api.guards import ApiKeys
from embedserver.api.headers import ResponseHeaders
from embedserver.api.hosts import AllowedHosts, allowed_hosts
from embedserver.api.request_metrics import RequestMetrics
from embedserver.metrics import HttpMetrics
from embedserver.settings import Settings


def add_http_layers(app: FastAPI, settings: Settings, metrics: HttpMetrics) -> None:
    # The last added runs first: CORS, response headers, the Host check, request metrics (so refusals are
    # counted too), API keys, body, lane.
    if settings.fast_lane:
        app.add_middleware(FastLane)
    app.add_middleware(RequestBody, max_bytes=settings.max_body_bytes, metrics=metrics)
    if settings.api_key:
        open_paths = {"/health", "/ready"} | (set() if settings.metrics_require_key else {"/metrics"})
        app.add_middleware(ApiKeys, keys=settings.api_key, open_paths=open_paths)
    app.add_middleware(RequestMetrics, metrics=metrics, access_log=settings.access_log)
    app.add_middleware(AllowedHosts, hosts=allowed_hosts(settings.allowed_hosts, settings.host))
    app.add_middleware(ResponseHeaders)
    if settings.enable_cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
