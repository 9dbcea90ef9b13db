"""Values of a composed config written back as Hydra command-line overrides (``key=value``)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

_QUOTE_OR_END = re.compile(r"(\\*)('|$)")


def override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar, so that parsing it gives ``value`` back (strings always quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        # Inside quotes only backslashes before a quote or at the end are escapes (Hydra's grammar).
        return "'" + _QUOTE_OR_END.sub(lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as a Hydra override")


def overrides_for(cfg: DictConfig, keys: Iterable[str]) -> list[str]:
    """``key=value`` for each of ``keys`` that ``cfg`` has, resolved; a node becomes one override per leaf, so the
    target config keeps its other keys (and their interpolations)."""
    overrides: list[str] = []
    for key in keys:
        if OmegaConf.select(cfg, key, throw_on_missing=False, default=_ABSENT) is _ABSENT:
            continue
        node = OmegaConf.select(cfg, key)
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        overrides.extend(_leaves(key, plain))
    return overrides


_ABSENT = object()


def _leaves(key: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [override for name, item in value.items() for override in _leaves(f"{key}.{name}", item)]
    return [f"{key}={override_value(value)}"]
