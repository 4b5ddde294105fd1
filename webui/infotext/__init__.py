"""Infotext: the generation parameters A1111 writes into each PNG, formatted and parsed."""

from webui.infotext.format import format_infotext, format_params_line, generation_params, quote
from webui.infotext.parse import (
    infotext_to_params,
    parse_generation_parameters,
    parse_params_line,
    split_sampler_and_schedule,
    unquote,
)

__all__ = [
    "format_infotext",
    "format_params_line",
    "generation_params",
    "infotext_to_params",
    "parse_generation_parameters",
    "parse_params_line",
    "quote",
    "split_sampler_and_schedule",
    "unquote",
]
