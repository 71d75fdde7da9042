"""The gateway's configuration: one TOML file parsed into frozen dataclasses.

Every problem is collected (not just the first), each naming the key path, what was found and
what is expected, so `store-gateway check-config` can print them all at once.
"""

from __future__ import annotations

from gateway.runtime.config.checks import STREAM_SCHEMES, quiet_hours
from gateway.runtime.config.devices import (
    AppConfig,
    BleConfig,
    BleScannerConfig,
    CameraConfig,
    KioskConfig,
    LaneConfig,
    PrinterConfig,
    PrinterLink,
    ScreenConfig,
    TabletConfig,
    parse_printer_link,
)
from gateway.runtime.config.loader import Config, ConfigError, load_config, parse_config
from gateway.runtime.config.sections import (
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
)

__all__ = [
    "STREAM_SCHEMES",
    "AppConfig",
    "BleConfig",
    "BleScannerConfig",
    "BudgetsConfig",
    "CameraConfig",
    "CatalogConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "DecisionConfig",
    "HealthConfig",
    "IdentityConfig",
    "KioskConfig",
    "LaneConfig",
    "LoggingConfig",
    "MqttConfig",
    "OutboxConfig",
    "PrinterConfig",
    "PrinterLink",
    "ScreenConfig",
    "StoreConfig",
    "SupervisorConfig",
    "TabletConfig",
    "load_config",
    "parse_config",
    "parse_printer_link",
    "quiet_hours",
]
