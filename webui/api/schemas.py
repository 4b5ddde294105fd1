"""Request and response bodies of ``/sdapi/v1``, with A1111's field names, types and defaults.

Like A1111's, every generation field may be sent as ``null`` (meaning: the default). Unknown fields are
accepted (``extra="allow"``) so that clients written for other A1111 versions keep working; the handlers
report them in the response's warnings instead of dropping them silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# --- generation ------------------------------------------------------------------------------------


class GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img (A1111's ``StableDiffusionProcessing`` plus the API extras)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    prompt: str | None = ""
    negative_prompt: str | None = None
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = Field(default="Euler", description="Legacy name of sampler_name.")
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = Field(default=None, description="Use this id for the job (see /queue).")
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = Field(
        default=None, description="Infotext whose values fill the fields this request does not set."
    )


class Txt2ImgRequest(GenerationRequest):
    """``POST /sdapi/v1/txt2img``."""

    enable_hr: bool | None = False
    denoising_strength: float | None = 0.75
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""


class Img2ImgRequest(GenerationRequest):
    """``POST /sdapi/v1/img2img``. Images are base64 (with or without a ``data:`` prefix)."""

    init_images: list[str] | None = None
    resize_mode: int | None = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(default=False, description="Echo the images in `parameters`.")


class GenerationResponse(BaseModel):
    """The answer of txt2img and img2img: base64 PNGs (infotext in their ``parameters`` chunk)."""

    images: list[str] | None = Field(default=None, description="The generated images in base64 format.")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string with A1111's keys (all_prompts, all_seeds, infotexts, ...).")


# --- extras and PNG info ------------------------------------------------------------------------------


class ExtrasBaseRequest(BaseModel):
    """Fields shared by the two extras endpoints."""

    resize_mode: Literal[0, 1] = Field(
        default=0, description="0: scale by upscaling_resize, 1: scale to w x h."
    )
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    """``POST /sdapi/v1/extra-single-image``."""

    image: str = Field(default="", description="The image, base64.")


class FileData(BaseModel):
    """One image of a batch."""

    data: str = Field(description="The image, base64.")
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    """``POST /sdapi/v1/extra-batch-images``."""

    imageList: list[FileData]  # A1111 spells it in camel case


class ExtrasSingleImageResponse(BaseModel):
    """The upscaled image and its postprocessing infotext."""

    html_info: str
    image: str | None = None
    warnings: list[str] = Field(default_factory=list)


class ExtrasBatchImagesResponse(BaseModel):
    """The upscaled images and the postprocessing infotext."""

    html_info: str
    images: list[str]
    warnings: list[str] = Field(default_factory=list)


class PNGInfoRequest(BaseModel):
    """``POST /sdapi/v1/png-info``."""

    image: str = Field(description="The image, base64.")


class PNGInfoResponse(BaseModel):
    """The image's infotext, its other text chunks and the parsed infotext."""

    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


# --- progress and queue -------------------------------------------------------------------------------


class ProgressResponse(BaseModel):
    """``GET /sdapi/v1/progress``."""

    progress: float = Field(description="0..1")
    eta_relative: float = Field(description="Seconds left.")
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class QueueItem(BaseModel):
    """One running or waiting job."""

    id: str
    kind: str
    status: str
    position: int = Field(description="0 for the running job, 1, 2, ... for waiting ones.")
    eta_seconds: float | None = Field(description="Rough seconds until this job is finished.")


class QueueResponse(BaseModel):
    """``GET /sdapi/v1/queue``."""

    running: int
    waiting: int
    jobs: list[QueueItem]


class CancelResponse(BaseModel):
    """``DELETE /sdapi/v1/queue/{job_id}``."""

    id: str
    status: str


# --- catalogues ---------------------------------------------------------------------------------------


class SamplerItem(BaseModel):
    """One sampler."""

    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    """One schedule type."""

    name: str
    label: str
    aliases: list[str] | None
    default_rho: float | None
    need_inner_model: bool | None


class UpscalerItem(BaseModel):
    """One upscaler."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    """One latent upscale mode."""

    name: str


class SDModelItem(BaseModel):
    """One checkpoint."""

    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    """One VAE."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class PromptStyleItem(BaseModel):
    """One prompt style."""

    name: str
    prompt: str | None
    negative_prompt: str | None


class MemoryResponse(BaseModel):
    """RAM and CUDA memory figures."""

    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(BaseModel):
    """Script titles per tab."""

    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class EmbeddingsResponse(BaseModel):
    """Textual-inversion embeddings (none loaded yet)."""

    loaded: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)
