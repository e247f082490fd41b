"""``GET /docs``: the API reference page (Swagger UI), served whole from this installation.

The page used to load its script, stylesheet and logo from a CDN at ``@latest`` without an integrity
check, so it was blank without internet and ran whatever that CDN served. Swagger UI 5 (which reads
OpenAPI 3.1, as Litestar writes it) now comes from the ``swagger-ui-py`` package's static files under
``/docs/assets/``, the page's own start-up script is a file too (no inline script), and every response
under ``/docs`` carries a content security policy that allows this origin only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from litestar import Request, Router, get
from litestar.datastructures import ResponseHeader
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.static_files import create_static_files_router


def _swagger_ui_dir() -> Path:
    """Where ``swagger-ui-py`` keeps Swagger UI's files (found without importing the package and its templating)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("the swagger-ui-py package is missing: reinstall tenantgate")
    return Path(spec.origin).parent / "static"


DOCS_PATH = "/docs"
ASSETS_PATH = DOCS_PATH + "/assets"

# Swagger UI sets style attributes on its elements, hence 'unsafe-inline' for styles (not for scripts).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_START = f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: "{DOCS_PATH}/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout"
  }});
}});
""".encode()


class OfflineSwaggerPlugin(OpenAPIRenderPlugin):
    """Swagger UI from ``/docs/assets``; the document itself is fetched from ``/docs/openapi.json``."""

    def __init__(self) -> None:
        super().__init__(path="/swagger", favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = str(openapi_schema["info"]["title"]).replace("<", "&lt;")
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PATH}/swagger-ui-standalone-preset.js"></script>
  <script src="{DOCS_PATH}/start.js"></script>
</head>
<body><div id="swagger-ui"></div></body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        router.register(get("/start.js", media_type="text/javascript", sync_to_thread=False,
                            include_in_schema=False)(_start_script))


def _start_script() -> bytes:
    return _START


def docs_router() -> Router:
    """The router the OpenAPI plugins are mounted on (``OpenAPIConfig.openapi_router``): ``/docs`` with the CSP."""
    return Router(
        DOCS_PATH, route_handlers=[], include_in_schema=False,
        response_headers=[ResponseHeader(name="content-security-policy", value=CONTENT_SECURITY_POLICY)],
    )


def assets_router() -> Router:
    """Swagger UI's files, as the package ships them."""
    return create_static_files_router(
        ASSETS_PATH, directories=[str(_swagger_ui_dir())], include_in_schema=False, name="docs-assets"
    )
