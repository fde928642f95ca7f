"""`python -m tests.paused_writer POINT <writer options>`: the real Oxen writer, stopping for good at POINT.

The crash tests SIGKILL the writer at exact steps of a group commit. The writer names those steps
(`storage.oxen_writer.reached`, which does nothing); this runs the same `main` with that seam
replaced, so no test hook lives in the production code.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import storage.oxen_writer as writer


def main() -> int:
    point, argv = sys.argv[1], sys.argv[2:]

    def stop_at(name: str, data_dir: Path) -> None:
        if name == point:
            (data_dir / f"writer-paused-{name}").write_text(str(os.getpid()))  # the test's cue to SIGKILL
            while True:
                time.sleep(3600)

    writer.reached = stop_at
    return writer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
