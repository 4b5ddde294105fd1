"""``txt2img``, ``img2img``, the extras (upscaling) endpoints and PNG info."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from webui.api.convert import EngineView, generation_answer, image_policy, prepare_generation
from webui.api.errors import ApiRoute
from webui.api.jobs import submit_generation
from webui.api.request_images import decode_image, read_infotext
from webui.api.schemas import (
    ExtrasBaseRequest,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationRequest,
    GenerationResponse,
    Img2ImgRequest,
    PNGInfoRequest,
    PNGInfoResponse,
    Txt2ImgRequest,
)
from webui.context import AppContext
from webui.engine.errors import InvalidParameter
from webui.engine.extras import ExtrasParams, upscale
from webui.engine.images import encode_png_base64
from webui.engine.jobs import wait_async
from webui.engine.styles import StyleDatabase
from webui.infotext.parse import parse_generation_parameters

log = logging.getLogger(__name__)


def _extras_params(req: ExtrasBaseRequest) -> tuple[ExtrasParams, list[str]]:
    warnings = []
    if req.gfpgan_visibility > 0 or req.codeformer_visibility > 0:
        warnings.append(
            "gfpgan_visibility/codeformer_visibility: face restoration is not supported yet; ignored"
        )
    if req.upscale_first:
        warnings.append("upscale_first: without face restoration the order makes no difference; ignored")
    params = ExtrasParams(
        resize_mode=req.resize_mode,
        upscaling_resize=req.upscaling_resize,
        upscaling_resize_w=req.upscaling_resize_w,
        upscaling_resize_h=req.upscaling_resize_h,
        upscaling_crop=req.upscaling_crop,
        upscaler_1=req.upscaler_1,
        upscaler_2=req.upscaler_2,
        extras_upscaler_2_visibility=req.extras_upscaler_2_visibility,
    )
    for text in warnings:
        log.warning("extras request: %s", text)
    return params, warnings


def build_generation_router(ctx: AppContext, styles: StyleDatabase) -> APIRouter:
    """Routes that queue image work on the GPU worker."""
    router = APIRouter(route_class=ApiRoute, tags=["generation"])
    view = EngineView(ctx.options, ctx.samplers, ctx.upscalers, ctx.models, styles)

    async def generate(req: GenerationRequest) -> dict[str, Any]:
        prepared = await run_in_threadpool(prepare_generation, req, view)
        if prepared.job_id is not None and ctx.queue.get(prepared.job_id) is not None:
            raise InvalidParameter("force_task_id", f"a job with id {prepared.job_id!r} already exists")
        job = submit_generation(
            ctx,
            prepared.params,
            overrides=prepared.overrides,
            restore_afterwards=prepared.restore_afterwards,
            job_id=prepared.job_id,
        )
        result = await wait_async(job)
        if result is None:
            raise RuntimeError(f"job {job.id} ended without a result")
        return await run_in_threadpool(generation_answer, prepared, result, ctx.options, job.started_at)

    @router.post("/txt2img", response_model=GenerationResponse)
    async def txt2img(req: Txt2ImgRequest) -> dict[str, Any]:
        """Generate images from a prompt."""
        return await generate(req)

    @router.post("/img2img", response_model=GenerationResponse)
    async def img2img(req: Img2ImgRequest) -> dict[str, Any]:
        """Generate images from init images (and inpaint with a mask)."""
        return await generate(req)

    def upscale_all(images: list[Any], params: ExtrasParams) -> tuple[list[str], str]:
        encoded, info = [], ""
        for image in images:
            result, info = upscale(image, params, ctx.upscalers)
            encoded.append(encode_png_base64(result, info))
        return encoded, info

    async def run_extras(
        images_b64: list[tuple[str, str]], req: ExtrasBaseRequest
    ) -> tuple[list[str], str, list[str]]:
        params, warnings = _extras_params(req)
        policy = image_policy(ctx.options)
        images = await run_in_threadpool(
            lambda: [decode_image(data, field, policy) for field, data in images_b64]
        )
        job = ctx.submit("extras", lambda: upscale_all(images, params))
        encoded, info = await wait_async(job)  # type: ignore[misc]
        return encoded, info, warnings

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(req: ExtrasSingleImageRequest) -> dict[str, Any]:
        """Upscale one image."""
        encoded, info, warnings = await run_extras([("image", req.image)], req)
        image = encoded[0] if req.show_extras_results else None
        return {"html_info": info, "image": image, "warnings": warnings}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(req: ExtrasBatchImagesRequest) -> dict[str, Any]:
        """Upscale several images."""
        sources = [(f"imageList.{i}.data", item.data) for i, item in enumerate(req.imageList)]
        encoded, info, warnings = await run_extras(sources, req)
        return {"html_info": info, "images": encoded if req.show_extras_results else [], "warnings": warnings}

    @router.post("/png-info", response_model=PNGInfoResponse)
    async def png_info(req: PNGInfoRequest) -> dict[str, Any]:
        """Read the generation parameters stored in an image."""
        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}

        def read() -> dict[str, Any]:
            image = decode_image(req.image, "image", image_policy(ctx.options))
            text, items = read_infotext(image)
            parameters = parse_generation_parameters(text) if text else {}
            return {"info": text or "", "items": items, "parameters": parameters}

        return await run_in_threadpool(read)

    return router
