"""The FastAPI app of `sdcpu serve`: A1111's API, the page, the errors as A1111's clients expect them.

Every error is one JSON object `{"error", "detail", "body", "errors"}` (A1111's shape) with one clear line in
`detail`: 422 for a request sdcpu cannot run (a UserError from the request rules, a refused field, a limit)
or a malformed one, 401 without credentials, 413 for a body too large, 503 with Retry-After for a full queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import sdcpu
from sdcpu.engine.errors import UserError
from sdcpu.engine.server.a1111_requests import ServerLimits
from sdcpu.engine.server.routes_a1111 import router as a1111_router
from sdcpu.engine.server.security import BasicAuth, BodyLimit, LoopbackHostOnly, is_loopback
from sdcpu.engine.server.served_models import model_defaults
from sdcpu.engine.server.state import ServerState, server_state

PAGE_DIR = Path(__file__).parent / "page"
STATUS_NAMES = {401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge",
                422: "UnprocessableEntity", 499: "ClientClosedRequest", 503: "ServiceUnavailable"}


@dataclass(frozen=True)
class AppSecurity:
    host: str = "127.0.0.1"
    credentials: list[tuple[str, str]] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)


FLAG_FIELDS = {
    "--width": "width", "--height": "height", "--steps": "steps", "--guidance": "cfg_scale", "--seed": "seed",
    "--scheduler": "sampler_name", "--sampler": "sampler_name", "--schedule-type": "scheduler",
    "--batch": "batch_size", "--subseed-strength": "subseed_strength", "--subseed": "subseed",
    "--seed-resize-from": "seed_resize_from_w/h", "--clip-skip": "CLIP_stop_at_last_layers",
    "--ensd": "eta_noise_seed_delta", "--noise": "randn_source", "--emphasis": "emphasis",
    "--strength": "denoising_strength", "--init-image": "init_images", "--mask-blur": "mask_blur", "--mask": "mask",
    "--resize": "resize_mode", "--prompt-syntax": "prompt syntax",
}
FLAG = re.compile(r"--[a-z][a-z-]*")
SERVER_FLAGS = ("--max-steps", "--max-images", "--max-pixels", "--max-body-mb", "--save-dir", "--queue-size",
                "--api-auth")


def api_wording(message: str) -> str:
    """The core's rules speak of the CLI's flags; over the API they name A1111's fields (server flags stay)."""
    return FLAG.sub(lambda m: m.group(0) if m.group(0) in SERVER_FLAGS else FLAG_FIELDS.get(m.group(0), m.group(0)),
                    message)


def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    name = STATUS_NAMES.get(status, "Error")
    return JSONResponse({"error": name, "detail": detail, "body": "", "errors": detail}, status, headers=headers)


def _validation_line(exc: RequestValidationError) -> str:
    """Pydantic's first complaint as one line: where, and what was wrong."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where or 'body'}: {first.get('msg')}{more}"


def _install_error_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return _error(422, api_wording(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"{request.url.path} is not served by sdcpu (the routes it serves are listed at /docs)"
        elif exc.status_code == 405:
            allowed = (headers or {}).get("Allow") or (headers or {}).get("allow")
            detail = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
        return _error(exc.status_code, detail, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        state.log(f"error in {request.url.path}: {type(exc).__name__}: {exc}")
        return _error(500, f"{type(exc).__name__}: {exc}")


def create_app(state: ServerState, security: AppSecurity = AppSecurity()) -> FastAPI:
    app = FastAPI(title="sdcpu", version=sdcpu.__version__,
                  description="Automatic1111's web API on sdcpu's CPU runtime, and a page at /")
    app.state.sdcpu = state
    _install_error_handlers(app, state)
    app.include_router(a1111_router)

    @app.get("/sdcpu/v1/models")
    async def models(state: ServerState = Depends(server_state)) -> list[dict]:
        """Each served model with the defaults `sdcpu generate` would use (the page fills its form from them)."""
        return [model_defaults(model) for model in state.slot.models]

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE_DIR / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
    app.add_middleware(BodyLimit, limit=state.limits.max_body_bytes)
    if security.credentials:
        app.add_middleware(BasicAuth, credentials=security.credentials)
    if is_loopback(security.host):
        app.add_middleware(LoopbackHostOnly)
    if security.cors_origins:  # outermost: a browser's preflight carries no credentials
        app.add_middleware(CORSMiddleware, allow_origins=security.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], allow_credentials=bool(security.credentials))
    return app


def default_limits(max_steps: int | None, max_images: int | None, max_pixels: int | None,
                   max_body_mb: int | None) -> ServerLimits:
    base = ServerLimits()
    return ServerLimits(max_steps or base.max_steps, max_images or base.max_images, max_pixels or base.max_pixels,
                        (max_body_mb * 2**20) if max_body_mb else base.max_body_bytes)
