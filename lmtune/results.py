"""The base of every command's typed result: a dataclass that prints as JSON and reads like the old dicts."""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any


class Result:
    """Mixin for result dataclasses: ``to_dict()`` (JSON-ready), ``to_json()``, and ``result["field"]``.

    Item access is what lmtune's entry points returned before they had typed results (plain dicts); it
    keeps old notebooks working and warns.
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def __getitem__(self, key: str) -> Any:
        warnings.warn(f"{type(self).__name__}[{key!r}] is deprecated; use the attribute or to_dict()",
                      DeprecationWarning, stacklevel=2)
        return self.to_dict()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


def _plain(value: Any) -> Any:
    if isinstance(value, Result):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
