"""/docs without the internet: Swagger UI's page with its script and style served by this server, from the
`swagger-ui-bundle` package, instead of from a CDN (a machine offline, or behind a strict proxy, got a blank
page). ReDoc has no packaged copy, so /redoc is off."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def install_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
        )

    for name, media_type in _ASSETS.items():
        path = swagger_ui_path / name

        async def asset(path: object = path, media_type: str = media_type) -> FileResponse:
            return FileResponse(
                str(path), media_type=media_type, headers={"cache-control": "public, max-age=86400"}
            )

        app.add_api_route(
            f"/docs/{name}", asset, methods=["GET"], include_in_schema=False, name=f"docs:{name}"
        )
