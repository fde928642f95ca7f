"""The README's torch lines and `.ci/run` install the torch that pyproject.toml pins, the right build each."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pinned_torch() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    (torch,) = [d for d in deps if d.startswith("torch")]
    return torch.split("==")[1]


def test_every_torch_line_installs_the_pinned_version() -> None:
    """README and CI name the same torch version as pyproject.toml, and nothing else."""
    version = pinned_torch()
    assert set(re.findall(r"torch==([\w.+]+)", README + CI)) == {version}


def test_the_readme_gives_a_cpu_line_and_a_gpu_line() -> None:
    """A CPU-only machine gets PyTorch's CPU index; a GPU machine PyPI's (CUDA) wheel."""
    version = pinned_torch()
    assert f"pip install torch=={version} --index-url {CPU_INDEX}" in README
    assert re.search(rf"pip install torch=={re.escape(version)} +# either: NVIDIA GPU", README)


def test_ci_installs_torch_from_pips_sources_unless_an_index_is_given() -> None:
    """`.ci/run`'s torch line adds --index-url only when TORCH_INDEX_URL is set (here pip's configured
    local wheel is found without one), and stays valid under `set -u`."""
    (line,) = [line for line in CI.splitlines() if "pip install" in line and "torch==" in line]
    command = line.replace("python -m pip install --quiet", "printf '%s\\n'")
    plain = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"}, check=True).stdout.split()
    with_index = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "TORCH_INDEX_URL": CPU_INDEX}, check=True).stdout.split()
    assert plain == [f"torch=={pinned_torch()}"]
    assert with_index == [f"torch=={pinned_torch()}", "--index-url", CPU_INDEX]
