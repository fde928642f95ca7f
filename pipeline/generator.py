"""The boundary between Refinery and whatever makes images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pipeline.requests import GenerationRequest, GenerationResult, ProgressCallback


@runtime_checkable
class Generator(Protocol):
    """Makes the candidates of one request. Blocking: call it from the GPU worker thread only."""

    model_id: str

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback | None = None
    ) -> GenerationResult:
        """Return one image per seed, reporting (step, total) through `progress` as it goes."""
        ...


def first_run_compiles(generator: Generator, requests: Sequence[GenerationRequest]) -> bool:
    """Whether running `requests` as one call compiles first. Only generators that compile have the
    method (DiffusersGenerator with torch.compile on); for the others a run never compiles."""
    check = getattr(generator, "first_run_compiles", None)
    return bool(check(requests)) if callable(check) else False
