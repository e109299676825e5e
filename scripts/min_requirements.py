"""Print pyproject.toml's dependencies and those of its extras, one per line, without torch: the input of
``make test-min``.

``uv pip install --resolution lowest-direct`` then installs each at its declared lower bound; torch stays at the
2.13.0 CPU build installed before it (any other torch means gigabytes of CUDA wheels here). Left out: ``gpu``
(bitsandbytes is CUDA-only), ``track`` (no fast test uses a tracker) and ``dev`` (the tools; the Makefile names
what it needs of them).
"""

import tomllib
from pathlib import Path

SKIPPED_EXTRAS = ("gpu", "track", "dev")

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = [d for name, deps in project["optional-dependencies"].items() if name not in SKIPPED_EXTRAS for d in deps]
print("\n".join(dict.fromkeys(d for d in project["dependencies"] + extras if not d.startswith("torch"))))
