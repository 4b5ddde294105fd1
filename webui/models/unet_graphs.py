"""The UNet forward pass replayed as CUDA graphs, one graph per input shape.

At the batch sizes people use (1-4 images), an SD UNet step on a fast GPU is bound by the CPU launching
its ~850 kernels one by one, not by the GPU: on an H100, SD1.5 at 512x512 keeps the GPU busy about a quarter
of the time. A captured graph replays all of a step's kernels with one launch. The graph reads its inputs
from fixed buffers and writes its output to a fixed buffer, so each call copies the inputs in, replays,
and hands back the output buffer (valid until the next call: the caller consumes it at once).

A graph is only used where it is exactly equivalent to the eager call: on CUDA, with autograd off (disco
guidance differentiates through the UNet and runs eagerly), with the weights where they were at capture
(a model moved to RAM and back has new addresses; the graphs are dropped). A shape whose capture fails
runs eagerly from then on, and the reason is logged once. Weights changed in place (same tensors) are
seen by the graphs; weights replaced by new tensors are detected by their addresses.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

UNetCall = Callable[..., torch.Tensor]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    added: dict[str, torch.Tensor]
    output: torch.Tensor


def _signature(t: torch.Tensor) -> tuple[object, ...]:
    return (tuple(t.shape), t.dtype, t.device)


class GraphedUNet:
    """Runs ``unet(sample, timestep, encoder_hidden_states=..., added_cond_kwargs=...).sample`` through
    CUDA graphs where possible, eagerly otherwise; keeps at most ``max_graphs`` shapes (least recently
    used dropped first). All graphs share one memory pool, safe because replays never overlap."""

    def __init__(self, unet: torch.nn.Module, max_graphs: int = 3, warmup_calls: int = 2) -> None:
        self.unet = unet
        self.max_graphs = max_graphs
        self.warmup_calls = warmup_calls
        self._graphs: OrderedDict[tuple[object, ...], _Captured] = OrderedDict()
        self._eager_only: set[tuple[object, ...]] = set()
        self._weights_key: tuple[int, ...] | None = None
        self._pool: object | None = None
        self.replays = 0
        self.captures = 0

    def clear(self) -> None:
        """Drop every captured graph and its memory (the model moved, or its weights were replaced)."""
        self._graphs.clear()
        self._eager_only.clear()
        self._pool = None
        self._weights_key = None

    @property
    def graph_count(self) -> int:
        """How many input shapes have a captured graph."""
        return len(self._graphs)

    def eager(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The plain UNet call."""
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        return self.unet(sample, timestep, encoder_hidden_states=context, **kwargs).sample

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        added: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The UNet's output for these inputs; through a graph when that is exactly equivalent."""
        tensors = [sample, timestep, context, *(added or {}).values()]
        if (
            sample.device.type != "cuda"
            or torch.is_grad_enabled()
            or any(t.requires_grad or t.device != sample.device for t in tensors)
        ):
            return self.eager(sample, timestep, context, added)
        self._check_weights()
        key = (
            _signature(sample),
            _signature(timestep),
            _signature(context),
            tuple((name, _signature(t)) for name, t in sorted((added or {}).items())),
        )
        if key in self._eager_only:
            return self.eager(sample, timestep, context, added)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(key, sample, timestep, context, added)
            if captured is None:
                return self.eager(sample, timestep, context, added)
        self._graphs.move_to_end(key)
        captured.sample.copy_(sample)
        captured.timestep.copy_(timestep)
        captured.context.copy_(context)
        for name, t in (added or {}).items():
            captured.added[name].copy_(t)
        captured.graph.replay()
        self.replays += 1
        return captured.output

    def _check_weights(self) -> None:
        key = tuple(p.data_ptr() for p in self.unet.parameters())
        if key != self._weights_key:
            if self._weights_key is not None:
                log.info("UNet weights moved or were replaced: dropping %d CUDA graph(s)", len(self._graphs))
            self.clear()
            self._weights_key = key

    def _capture(
        self,
        key: tuple[object, ...],
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> _Captured | None:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        static_sample, static_t, static_ctx = sample.clone(), timestep.clone(), context.clone()
        static_added = {name: t.clone() for name, t in (added or {}).items()}
        static_added_arg = static_added if added is not None else None
        try:
            side = torch.cuda.Stream(device=sample.device)
            side.wait_stream(torch.cuda.current_stream(sample.device))
            with torch.cuda.stream(side):  # warm-up off the main stream, as capture requires
                for _ in range(self.warmup_calls):
                    self.eager(static_sample, static_t, static_ctx, static_added_arg)
            torch.cuda.current_stream(sample.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                output = self.eager(static_sample, static_t, static_ctx, static_added_arg)
        except RuntimeError as error:  # capture not possible for this shape (or out of memory)
            log.warning("CUDA graph capture failed for UNet input %s; running it eagerly: %s", key[0], error)
            self._eager_only.add(key)
            torch.cuda.synchronize(sample.device)
            return None
        self.captures += 1
        captured = _Captured(graph, static_sample, static_t, static_ctx, static_added, output)
        self._graphs[key] = captured
        return captured
