"""Automatic1111's API under /sdapi/v1: thin routes over the queue and engine/server/a1111_*.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from sdcpu.engine.errors import UserError
from sdcpu.engine.server import a1111_lists
from sdcpu.engine.server.a1111_jobs import run_generation
from sdcpu.engine.server.a1111_requests import check_request
from sdcpu.engine.server.a1111_schema import Img2ImgBody, OptionsBody, PngInfoBody, Txt2ImgBody
from sdcpu.engine.server.server_options import with_settings
from sdcpu.engine.server.state import ServerState, run_queued, server_state

router = APIRouter(prefix="/sdapi/v1")
State = Depends(server_state)


async def _generate(request: Request, state: ServerState, body: Txt2ImgBody, kind: str) -> dict:
    if body.save_images and state.save_dir is None:
        raise UserError("save_images needs a server started with --save-dir DIR; the images come back in the "
                        "answer either way")
    options = check_request(body, state.options, state.limits)
    state.slot.find(options.sd_model_checkpoint)

    def work(control):
        return run_generation(state.slot, body, options, state.limits, control, state.save_dir)

    answer = await run_queued(request, state, kind, work, body.n_iter)
    if body.override_settings and not body.override_settings_restore_afterwards:
        _keep_overrides(state, dict(body.override_settings))
    return answer


def _keep_overrides(state: ServerState, overrides: dict) -> None:
    """override_settings_restore_afterwards: false: the request's settings become the server's (the model too,
    which the job has just loaded)."""
    wanted = overrides.pop("sd_model_checkpoint", None)
    if wanted is not None:
        state.switch_model(state.slot.find(str(wanted)))
    state.set_options(overrides)


@router.post("/txt2img")
async def txt2img(body: Txt2ImgBody, request: Request, state: ServerState = State) -> dict:
    return await _generate(request, state, body, "txt2img")


@router.post("/img2img")
async def img2img(body: Img2ImgBody, request: Request, state: ServerState = State) -> dict:
    return await _generate(request, state, body, "img2img")


@router.get("/progress")
async def progress(skip_current_image: bool = False, state: ServerState = State) -> dict:
    return a1111_lists.progress(state.queue.running(), state.queue.waiting, not skip_current_image)


@router.post("/interrupt")
async def interrupt(state: ServerState = State) -> dict:
    state.queue.interrupt()
    return {}


@router.post("/skip")
async def skip(state: ServerState = State) -> dict:
    state.queue.skip()
    return {}


@router.get("/options")
async def get_options(state: ServerState = State) -> dict:
    return state.options.as_json(state.current_model().manifest.a1111_hash)


@router.post("/options")
async def set_options(body: OptionsBody, request: Request, state: ServerState = State) -> None:
    """Settings are checked first, all or nothing; sd_model_checkpoint loads the model after the running job
    (through the queue), and the settings apply once it is in."""
    changes = dict(body.model_extra or {})
    wanted = changes.pop("sd_model_checkpoint", None)
    with_settings(state.options, changes)
    model = state.slot.find(str(wanted)) if wanted is not None else None
    if model is not None:
        await run_queued(request, state, "load model", lambda control: state.slot.pipeline(model))
        state.switch_model(model)
    state.set_options(changes)
    return None


@router.post("/refresh-checkpoints")
async def refresh_checkpoints(state: ServerState = State) -> None:
    """Look again for exported models (a server started without --model serves every one it finds)."""
    state.refresh_models()
    return None


@router.get("/memory")
async def memory() -> dict:
    return a1111_lists.memory()


@router.get("/sd-models")
async def sd_models(state: ServerState = State) -> list[dict]:
    return [model.a1111_entry() for model in state.slot.models]


@router.get("/samplers")
async def samplers() -> list[dict]:
    return a1111_lists.sampler_list()


@router.get("/schedulers")
async def schedulers() -> list[dict]:
    return a1111_lists.scheduler_list()


@router.post("/png-info")
async def png_info(body: PngInfoBody) -> dict:
    return a1111_lists.png_info(body.image)


def _empty_list_route(name: str) -> None:
    """A list clients read on start (upscalers, sd-vae, loras, ...): valid and empty, sdcpu has none."""

    async def empty_list():
        return a1111_lists.EMPTY_LISTS[name]

    router.add_api_route(f"/{name}", empty_list, methods=["GET"], name=f"list {name}")


for _name in a1111_lists.EMPTY_LISTS:
    _empty_list_route(_name)
