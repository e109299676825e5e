"""Print pyproject.toml's dependencies, one per line, without torch: the input of ``make test-min``.

``uv pip install --resolution lowest-direct`` then installs each at its declared lower bound; torch stays at the
2.13.0 CPU build installed before it (any other torch means gigabytes of CUDA wheels here).
"""

import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
print("\n".join(d for d in project["dependencies"] if not d.startswith("torch")))
