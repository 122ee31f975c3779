"""`sdcpu serve`: Automatic1111's web API and a page at /, over one queue, on uvicorn."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import typer

from sdcpu.engine.errors import UserError
from sdcpu.engine.request_defaults import default_model
from sdcpu.engine.server.app import AppSecurity, create_app, default_limits
from sdcpu.engine.server.job_queue import JobQueue
from sdcpu.engine.server.security import is_loopback, parse_credentials
from sdcpu.engine.server.served_models import ModelSlot, served_models
from sdcpu.engine.server.server_options import ServerOptions
from sdcpu.engine.server.state import ServerState


def _log(line: str) -> None:
    typer.echo(line, err=True)


def _first_model(models, given: list[str]):
    """The model served first: the first --model, else the bundled one when it is listed, else the first found."""
    if given:
        return models[0]
    bundled = default_model().resolve()
    return next((m for m in models if m.folder == bundled), models[0])


def _check_can_listen(host: str, port: int) -> None:
    """One line, before any model loads, when the address is taken or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (pick another --port)") from None


def build_state(model: list[str], queue_size: int, inference_precision: str | None, compile_cache: bool,
                limits, save_dir: Path | None) -> ServerState:
    if queue_size < 1:
        raise UserError(f"--queue-size must be at least 1 (got {queue_size})")
    if save_dir is not None and not save_dir.is_dir():
        raise UserError(f"--save-dir {save_dir} is not a folder")
    models = served_models(model)
    first = _first_model(models, model)
    slot = ModelSlot(models, _log, compile_cache, inference_precision, model)
    state = ServerState(slot, JobQueue(queue_size), ServerOptions(sd_model_checkpoint=first.title),
                        limits, save_dir, _log)
    loading = state.queue.submit("load model", lambda control: slot.pipeline(first))
    loading.future.add_done_callback(_report_load_failure)
    return state


def _report_load_failure(future) -> None:
    """The model loaded at start failed: say so now (each request for it then gets the same line as a 422)."""
    if not future.cancelled() and future.exception() is not None:
        _log(f"error: {future.exception()}")


def run_serve(model: list[str], host: str, port: int, api_auth: str | None, queue_size: int,
              cors_allow_origins: list[str], inference_precision: str | None, compile_cache: bool,
              save_dir: Path | None, stop_after: float | None, **limits) -> None:
    import uvicorn

    credentials = parse_credentials(api_auth) if api_auth else []
    if not 0 < port < 65536:
        raise UserError(f"--port must be from 1 to 65535 (got {port})")
    _check_can_listen(host, port)
    state = build_state(model, queue_size, inference_precision, compile_cache, default_limits(**limits), save_dir)
    app = create_app(state, AppSecurity(host, credentials, cors_allow_origins))
    if not is_loopback(host) and not credentials:
        _log(f"warning: listening on {host} without --api-auth: anyone who can reach this machine can use it")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    if stop_after is not None:
        timer = threading.Timer(stop_after, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    shown = f"[{host}]" if ":" in host else host
    _log(f"sdcpu serve: http://{shown}:{port}/ (page) and http://{shown}:{port}/sdapi/v1 (Automatic1111 API); "
         f"models: {', '.join(m.title for m in state.slot.models)}")
    try:
        server.run()
    finally:
        state.queue.stop()
