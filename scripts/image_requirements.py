"""The requirements the Docker image installs before its source: pyproject.toml's dependencies,
plus those of the optional extras named (comma-separated) in the first argument.

    python scripts/image_requirements.py "mlflow" > /tmp/requirements.txt

Reads pyproject.toml alone (from the current folder), so that the image's dependency layer is
rebuilt only when that file changes. An unknown extra is an error that names it.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: str) -> list[str]:
    """The dependencies of ``pyproject`` and of each extra in ``extras`` (comma-separated).

    Raises:
        ValueError: an extra that pyproject.toml does not define.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    named = [extra.strip() for extra in extras.split(",") if extra.strip()]
    unknown = [extra for extra in named if extra not in optional]
    if unknown:
        raise ValueError(f"EXTRAS: {', '.join(unknown)} is not an extra of {pyproject} "
                         f"(known: {', '.join(sorted(optional))})")
    return [*project["dependencies"], *(dep for extra in named for dep in optional[extra])]


def main(argv: list[str]) -> int:
    try:
        print("\n".join(requirements(Path("pyproject.toml"), argv[1] if len(argv) > 1 else "")))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
