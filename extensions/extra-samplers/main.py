"""Entry point of the extra-samplers extension: registers its samplers through the public facade."""

from __future__ import annotations

from webui.extensions.api import ExtensionAPI

from .samplers import sample_deis, sample_er_sde, sample_ipndm, sample_res_multistep


def setup(api: ExtensionAPI) -> None:
    """Register iPNDM, DEIS, Res Multistep and ER SDE with A1111-style labels and aliases."""
    api.register_sampler(label="iPNDM", aliases=("ipndm",), function=sample_ipndm, default_schedule="karras")
    api.register_sampler(label="DEIS", aliases=("deis",), function=sample_deis, default_schedule="karras")
    api.register_sampler(
        label="Res Multistep",
        aliases=("res_multistep", "res_2m"),
        function=sample_res_multistep,
        default_schedule="karras",
    )
    api.register_sampler(
        label="ER SDE",
        aliases=("er_sde",),
        function=sample_er_sde,
        default_schedule="karras",
        stochastic=True,
    )
