"""TOML in, frozen dataclasses out: every problem collected (not just the first), each naming
the key path, what was found and what is expected."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.console.settings import ConsoleConfig
from gateway.runtime.config.checks import check
from gateway.runtime.config.devices import (
    AppConfig,
    BleConfig,
    CameraConfig,
    KioskConfig,
    LaneConfig,
    PrinterConfig,
    ScreenConfig,
    TabletConfig,
)
from gateway.runtime.config.sections import (
    _ID,
    _ID_HINT,
    BudgetsConfig,
    CatalogConfig,
    CloudConfig,
    DecisionConfig,
    HealthConfig,
    IdentityConfig,
    LoggingConfig,
    MqttConfig,
    OutboxConfig,
    StoreConfig,
    SupervisorConfig,
    _did_you_mean,
)


@dataclass(frozen=True, slots=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)  # issue 18
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    ble: BleConfig = field(default_factory=BleConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    app: AppConfig = field(default_factory=AppConfig)
    screens: Mapping[str, ScreenConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    kiosks: Mapping[str, KioskConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    printers: Mapping[str, PrinterConfig] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    lanes: Mapping[str, LaneConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    tablets: Mapping[str, TabletConfig] = field(default_factory=lambda: types.MappingProxyType({}))


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def load_config(path: Path, overrides: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a TOML file; `overrides` maps dotted keys to TOML values."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    for key, raw in (overrides or {}).items():
        _apply_override(data, key, raw, problems)
    if problems:
        raise ConfigError(str(path), problems)
    return parse_config(data, base_dir=path.parent, source=str(path))


def parse_config(data: Mapping[str, Any], *, base_dir: Path, source: str = "config") -> Config:
    """Validate parsed TOML data; relative paths are taken relative to `base_dir`."""
    problems: list[str] = []
    config = _build(Config, data, "", base_dir, problems)
    assert isinstance(config, Config)  # TOML's top level is always a table
    check(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def _apply_override(data: dict[str, Any], key: str, raw: str, problems: list[str]) -> None:
    parts = key.split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is taken as a string: --set store.id=store-42
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"--set {key}: '{part}' is not a table")
            return
        node = child
    node[parts[-1]] = value


def _describe(value: object) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, dict | list) else kind
    return f"{shown} ({kind})" if shown != kind else kind


def _build(tp: Any, value: Any, path: str, base_dir: Path, problems: list[str]) -> Any:  # noqa: PLR0911, PLR0912 - one branch per TOML type
    """Convert `value` to type `tp`, appending a problem (and returning None) when it can't."""
    origin = typing.get_origin(tp)
    where = path or "(top level)"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{where}: found {_describe(value)}, expected a table")
            return None
        return _build_dataclass(tp, value, path, base_dir, problems)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        # An empty string unsets an optional value: `--set decision.model_file=` means none.
        if value is None or value == "":
            return None
        return _build(inner, value, path, base_dir, problems)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = _did_you_mean(str(value), [str(c) for c in choices])
        expected = " or ".join(repr(c) for c in choices)
        problems.append(f"{where}: found {_describe(value)}, expected {expected}{hint}")
        return None
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: found {_describe(value)}, expected an array of strings")
            return None
        return tuple(value)
    if origin is Mapping:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{where}: found {_describe(value)}, expected a table of tables")
            return None
        items = {}
        for name, item in value.items():
            if not _ID.match(name):
                problems.append(f"{path}.{name}: not a valid id, expected {_ID_HINT}")
            items[name] = _build(item_tp, item, f"{path}.{name}", base_dir, problems)
        return types.MappingProxyType(items)
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: found {_describe(value)}, expected a file path string")
            return None
        return base_dir / value
    accepts, expected = _SCALARS[tp]
    if accepts(value):
        return float(value) if tp is float else value
    problems.append(f"{where}: found {_describe(value)}, expected {expected}")
    return None


# Scalar type -> (accepts the TOML value?, what to call it in an error). bool is not an int here.
_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _build_dataclass(
    cls: type[Any], data: dict[str, Any], path: str, base_dir: Path, problems: list[str]
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            problems.append(f"{key_path}: unknown key{_did_you_mean(key, list(fields))}")
            continue
        built = _build(hints[key], value, key_path, base_dir, problems)
        if built is None:
            continue
        meta = fields[key].metadata
        if not _within_bounds(built, meta, key_path, problems):
            continue
        kwargs[key] = built
    return cls(**kwargs)


def _within_bounds(value: Any, meta: Mapping[str, Any], path: str, problems: list[str]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison
        problems.append(f"{path}: found {value!r}, expected a finite number")
        return False
    if isinstance(value, int | float) and (
        (low is not None and value < low) or (high is not None and value > high)
    ):
        problems.append(f"{path}: found {value!r}, expected a value from {low:g} to {high:g}")
        return False
    if meta.get("id") and not _ID.match(str(value)):
        problems.append(f"{path}: found {value!r}, expected an id of {_ID_HINT}")
        return False
    return True
