"""Disco mode: CLIP-guided diffusion in the style of Disco Diffusion, shipped as an extension."""
