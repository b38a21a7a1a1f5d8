"""An environment mapping that records which variables a reader asked for (Config.from_env's coverage)."""

from __future__ import annotations

from typing import Any


class RecordingEnv(dict[str, str]):
    """An environment that remembers every name looked up, whether with get() or `in`."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)
