"""The customer-email app's settings, typed: where its services are and how it sends mail.

Each is read from the configuration's app settings (`settings:` in the config file, or the
environment): `PM_ORDER_SERVICE_URL`, `PM_SMTP_HOST`, `PM_SMTP_PORT`, `PM_SMTP_USER`,
`PM_SMTP_PASSWORD`, `PM_SMTP_STARTTLS`, `PM_SMTP_SSL`, `PM_REPLY_FROM`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pm.config import Config, ConfigError

__all__ = ["EmailSettings"]

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class EmailSettings:
    order_service_url: str = "http://127.0.0.1:8765"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    reply_from: str = "support@example.com"

    @classmethod
    def of(cls, config: Config) -> EmailSettings:
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = config.settings.get(f.name)
            if raw is None or raw == "":
                continue
            if f.type == "int":
                try:
                    values[f.name] = int(raw)
                except ValueError as exc:
                    raise ConfigError(f"setting {f.name!r}: {raw!r} is not a whole number") from exc
            elif f.type == "bool":
                values[f.name] = raw.strip().lower() in _TRUE
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]
