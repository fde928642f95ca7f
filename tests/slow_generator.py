"""A generator made slow on purpose, for tests that must act while a job runs (cancel it, kill its worker).

The tiny model finishes a job in milliseconds; wrapping it here keeps the slowing out of the worker's
production code. `python -m tests.slow_generator --delay 0.1 <refinery worker options>` runs a real
Redis worker process (the same `pipeline.redis_worker.serve`) on the config's model, slowed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.generator import BaseGenerator, Generator
from pipeline.requests import GenerationRequest, GenerationResult, ProgressCallback


class SlowGenerator(BaseGenerator):
    """`inner`, sleeping `delay_s` before reporting each step (where a cancel is noticed)."""

    def __init__(self, inner: Generator, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.model_id = inner.model_id
        self.can_batch = inner.can_batch

    def _slowed(self, progress: ProgressCallback | None) -> ProgressCallback:
        def report(step: int, total: int) -> None:
            time.sleep(self.delay_s)
            if progress is not None:
                progress(step, total)
        return report

    def load(self) -> SlowGenerator:
        self.inner.load()
        return self

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        return self.inner.generate(request, self._slowed(progress))

    def generate_batch(self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
                       ) -> list[GenerationResult]:
        return self.inner.generate_batch(requests, self._slowed(progress))


def main(argv: list[str] | None = None) -> int:
    from bot.app import generator_settings
    from bot.config import load_config
    from pipeline.diffusers_generator import DiffusersGenerator
    from pipeline.redis_worker import serve

    parser = argparse.ArgumentParser(prog="python -m tests.slow_generator")
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--prefix", default="refinery")
    parser.add_argument("--name", default=None)
    parser.add_argument("--claim-after", type=float, default=60.0)
    args = parser.parse_args(argv)
    generator = SlowGenerator(DiffusersGenerator(generator_settings(load_config(args.config))), args.delay)
    return serve(generator, args.redis, prefix=args.prefix, name=args.name, claim_after_s=args.claim_after)


if __name__ == "__main__":
    sys.exit(main())
