"""Print the project's runtime requirements (plus extras) from pyproject.toml, one a line.

The image builds install dependencies in a layer of their own, before the source is copied, so
a code change does not reinstall torch. Usage: `python requirements.py [EXTRA ...]`, or
`python requirements.py --torch` for the torch pin alone (installed first, from the index the
image chooses: the CPU wheel index for the CPU image, PyPI's CUDA build for the GPU image)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Dependencies of the project and of the named extras, in pyproject order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        lines += [r for r in optional[extra] if not r.startswith("facechain-bot")]
    return lines


def torch_pin(pyproject: Path) -> str:
    """The project's torch requirement (e.g. `torch==2.13.0`)."""
    pins = [r for r in requirements(pyproject, []) if r.split("=")[0].strip() == "torch"]
    if len(pins) != 1:
        raise SystemExit("pyproject.toml must pin torch exactly once")
    return pins[0]


def main(argv: list[str]) -> str:
    """The lines to print for these arguments."""
    pyproject = Path("pyproject.toml")
    if argv == ["--torch"]:
        return torch_pin(pyproject)
    return "\n".join(requirements(pyproject, argv))


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:]) + "\n")
