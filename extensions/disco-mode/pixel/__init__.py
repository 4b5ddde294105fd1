"""Disco mode's pixel engine: the original Disco Diffusion models, sampled with DDIM or PLMS.

Modules:
    unet: the guided-diffusion UNet (module names match the released ``.pt`` checkpoints' keys),
        :class:`~.unet.PixelModelConfig` and config inference from a state dict.
    secondary: Disco's small secondary model (``secondary_model_imagenet_2.pth``).
    diffusion: the linear beta schedule, timestep respacing, and DDIM / PLMS loops with score conditioning.
    models: finding model files under ``models/disco/`` and loading them without unpickling objects.
    sampling: :func:`~.sampling.run_pixel`, Disco's guidance function wired to the loops.
"""
