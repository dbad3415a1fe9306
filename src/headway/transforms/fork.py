"""Paper A's Case C without the GIL: each encoder layer's heads run as ``torch.jit.fork`` tasks.

Every head of :func:`~headway.transforms.heads.split_heads` is traced to TorchScript once per
input shape; a scripted dispatcher forks the eight traced heads onto TorchScript's own C++
inter-op thread pool and waits for them, so the heads run concurrently without any Python
thread taking the GIL per kernel launch (``heads`` dispatches from Python threads). On CUDA each
forked head runs on its own stream (:class:`StreamHeadForker`: streams from PyTorch's pool, each
waiting for the caller's stream before its head, the caller's stream waiting for all of them
after). TorchScript's CUDA stream type exists only in CUDA builds of torch, so that dispatcher
is scripted on first use on a GPU; if it cannot be, the heads run forked on the caller's stream
and a warning says so. On the CPU the inter-op pool shares the cores with the intra-op threads
(see docs/benchmarks.md).

The projection before the heads and the rest of the layer after them run as in ``heads``.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from headway.errors import first_line
from headway.models.cswintt import CSWinTT, EncoderContext
from headway.transforms.heads import SplitHeads, TransformReport, WindowHead


class _TracedHead(nn.Module):
    """One head as a module of tensors only (what tracing needs): q, k, v (L, B, d), the
    padding mask (B, L) and the head's relative bias (an empty tensor when it has none)."""

    def __init__(self, head: WindowHead, context: EncoderContext, dropout: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.geometry = context.geometry
        self.dropout = dropout
        self.has_bias = head.window in context.biases

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        biases = {self.head.window: bias} if self.has_bias else {}
        context = EncoderContext(padding_mask, biases, self.geometry)
        return self.head(q, k, v, context, self.dropout)


class HeadForker(nn.Module):
    """Scripted: fork every traced head, wait for all, concatenate their channels."""

    def __init__(self, heads: list[torch.jit.ScriptModule]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor,
        biases: list[torch.Tensor],
    ) -> torch.Tensor:
        futures = torch.jit.annotate(list[torch.jit.Future[torch.Tensor]], [])
        for index, head in enumerate(self.heads):
            futures.append(torch.jit.fork(head, q, k, v, padding_mask, biases[index]))
        return torch.cat([torch.jit.wait(future) for future in futures], dim=-1)


class _HeadOnStream(nn.Module):
    """A traced head run with ``stream`` as the current CUDA stream of the forked task."""

    def __init__(self, head: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.head = head

    def forward(
        self,
        stream: torch.classes.cuda.Stream,  # type: ignore[name-defined]  # CUDA builds only
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        with torch.cuda.stream(stream):
            return self.head(q, k, v, padding_mask, bias)


class StreamHeadForker(nn.Module):
    """Scripted on CUDA: every head forked onto its own stream (from PyTorch's stream pool).
    Each stream first waits for the caller's stream (which produced q, k, v), and the caller's
    stream waits for every head's stream before the concatenation; a stream's next work
    always waits on the caller again, so an output's memory is never reused too early."""

    def __init__(self, heads: list[torch.jit.ScriptModule]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(_HeadOnStream(head) for head in heads)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor,
        biases: list[torch.Tensor],
    ) -> torch.Tensor:
        device = q.device.index
        caller = torch.cuda.current_stream(device)
        streams = []
        futures = torch.jit.annotate(list[torch.jit.Future[torch.Tensor]], [])
        for index, head in enumerate(self.heads):
            stream = torch.cuda.Stream(device)
            stream.wait_stream(caller)
            streams.append(stream)
            futures.append(torch.jit.fork(head, stream, q, k, v, padding_mask, biases[index]))
        outputs = [torch.jit.wait(future) for future in futures]
        for stream in streams:
            caller.wait_stream(stream)
        return torch.cat(outputs, dim=-1)


def script_forker(heads: list[torch.jit.ScriptModule], cuda: bool) -> torch.jit.ScriptModule:
    """The scripted dispatcher: :class:`StreamHeadForker` on CUDA (falling back, with a
    warning, to :class:`HeadForker` where this torch cannot script CUDA streams)."""
    if cuda:
        try:
            return torch.jit.script(StreamHeadForker(heads))
        except Exception as error:  # TorchScript raises several kinds for unsupported types
            warnings.warn(
                f"per-head CUDA streams could not be scripted ({first_line(error)}); "
                "the forked heads share the caller's stream",
                RuntimeWarning,
                stacklevel=3,
            )
    return torch.jit.script(HeadForker(heads))


class ForkedHeads(SplitHeads):
    """Split heads run through a scripted :class:`HeadForker`, traced on the first call for
    each input shape."""

    def __init__(self, split: SplitHeads) -> None:
        nn.Module.__init__(self)
        self.heads = split.heads
        self.dispatch = split.dispatch
        self._forkers: dict[tuple[tuple[int, ...], ...], torch.jit.ScriptModule] = {}

    def _forker(
        self,
        inputs: tuple[torch.Tensor, ...],
        context: EncoderContext,
        biases: list[torch.Tensor],
        dropout: nn.Module,
    ) -> torch.jit.ScriptModule:
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self._forkers:
            traced = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notices on shape arithmetic
                for head, bias in zip(self.heads, biases, strict=True):
                    module = _TracedHead(head, context, dropout).eval()
                    example = (*inputs, bias)
                    traced.append(torch.jit.trace(module, example, check_trace=False))
            self._forkers[key] = script_forker(traced, cuda=inputs[0].is_cuda)
        return self._forkers[key]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: EncoderContext,
        dropout: nn.Module,
    ) -> torch.Tensor:
        empty = q.new_empty(0)
        biases = [context.biases.get(head.window, empty) for head in self.heads]
        forker = self._forker((q, k, v, context.padding_mask), context, biases, dropout)
        return forker(q, k, v, context.padding_mask, biases)


def fork_heads(network: CSWinTT) -> tuple[CSWinTT, TransformReport]:
    """A copy of ``network`` whose encoder heads run as ``torch.jit.fork`` tasks."""
    from headway.transforms.heads import split_heads

    network = copy.deepcopy(network)
    split, _ = split_heads(network)
    layers = split.transformer.transformer
    for layer in layers:
        layer.attend = ForkedHeads(layer.attend)
    notes = [f"{split.config.num_heads} heads forked per layer (TorchScript inter-op pool)"]
    return split, TransformReport("fork_heads", len(layers), notes)
