"""The boundary between Refinery and whatever makes images: the whole surface, declared.

`Generator` is what the queues, the Redis worker and the app call — nothing is probed with
getattr/hasattr. `BaseGenerator` gives the defaults of a generator that loads nothing, compiles nothing
and cannot run several requests as one call (as httpx's `BaseTransport` does for transports): the tests'
fakes subclass it and override what they model; `DiffusersGenerator` implements all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pipeline.requests import GenerationRequest, GenerationResult, ProgressCallback


@runtime_checkable
class Generator(Protocol):
    """Makes the candidates of requests. Blocking: call it from the GPU worker thread only."""

    model_id: str
    # True when `generate_batch` runs compatible requests (equal `batch_key`) as ONE pipeline call; the
    # queues batch only then (otherwise it would only serialise them, which the queue does anyway).
    can_batch: bool

    def load(self) -> Generator:
        """Load the models now (so a bad setting fails at start-up); returns self."""
        ...

    def warm_up(self) -> float | None:
        """Run the usual shapes once so compiling happens before any user's job; seconds, or None if idle."""
        ...

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        """One image per seed, reporting (step, total) through `progress` as it goes."""
        ...

    def generate_batch(self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
                       ) -> list[GenerationResult]:
        """One result per request, in order (one pipeline call when `can_batch`)."""
        ...

    def first_run_compiles(self, requests: Sequence[GenerationRequest]) -> bool:
        """Whether running `requests` as one call will compile first (the user is told it is slower)."""
        ...


class BaseGenerator:
    """Defaults: nothing to load or warm, no compiling, no batching; subclasses implement `generate`."""

    model_id: str = "generator"
    can_batch: bool = False

    def load(self) -> BaseGenerator:
        return self

    def warm_up(self) -> float | None:
        return None

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        raise NotImplementedError

    def generate_batch(self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
                       ) -> list[GenerationResult]:
        return [self.generate(request, progress) for request in requests]

    def first_run_compiles(self, requests: Sequence[GenerationRequest]) -> bool:
        return False
