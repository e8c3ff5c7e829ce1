"""The server's settings: defaults, a TOML config file, BLINDLINK_* variables and flags.

Every setting has one name, used as the config file key, as the environment variable
(BLINDLINK_ + the name in capitals) and as the flag (--name-with-dashes). A flag wins over the
environment, the environment over the file, the file over the default. Relative paths in the
config file are relative to the file's directory. Unknown keys in the file are an error.
"""

from __future__ import annotations

import argparse
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from blindlink.errors import BlindlinkError
from blindlink.server.admission import MAX_RECEIVE_BYTES, MIB, CallLimits

ENV_PREFIX = "BLINDLINK_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
NO_DATA_DIR = (
    "data_dir is not set: pass --data-dir, set BLINDLINK_DATA_DIR or put data_dir in the "
    "config file"
)


class ConfigError(BlindlinkError):
    """A setting is unknown, of the wrong type, out of range or inconsistent with another."""


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA whose client certificates it accepts."""

    cert: Path
    key: Path
    client_ca: Path

    @classmethod
    def from_dir(cls, directory: Path) -> ServerTls:
        """The layout `blindlink pki init` writes: server.pem, server.key, ca.pem."""
        return cls(directory / "server.pem", directory / "server.key", directory / "ca.pem")


def _setting(default: Any, meaning: str, *aliases: str, choices: tuple[str, ...] = ()) -> Any:
    return field(
        default=default, metadata={"help": meaning, "aliases": aliases, "choices": choices}
    )


@dataclass(frozen=True)
class ServerConfig:
    """Everything `blindlink serve` can be told."""

    data_dir: Path | None = _setting(None, "directory where the server keeps its state (required)")
    listen: str = _setting("localhost:50051", "HOST:PORT for gRPC (port 0: any free port)")
    port_file: Path | None = _setting(None, "write the bound gRPC port here once serving")
    tls_dir: Path | None = _setting(
        None, "directory with server.pem, server.key and the client CA ca.pem"
    )
    tls_cert: Path | None = _setting(None, "server certificate", "--cert")
    tls_key: Path | None = _setting(None, "server certificate's key", "--key")
    tls_client_ca: Path | None = _setting(None, "CA of accepted client certificates", "--client-ca")
    insecure: bool = _setting(False, "plaintext and self-declared party roles; loopback only")
    metrics_listen: str | None = _setting(
        None, "HOST:PORT for Prometheus metrics over HTTP (default: off)"
    )
    metrics_tls: bool = _setting(
        False, "serve metrics over HTTPS, to clients with a certificate from the client CA"
    )
    rpc_workers: int = _setting(
        32,
        "threads handling calls: max_streams of them for uploads and watches, the rest for "
        "unary calls (health checks have threads of their own)",
    )
    max_streams: int | None = _setting(
        None, "streaming calls (uploads, watches) open at once (default: half of rpc_workers)"
    )
    max_calls_per_certificate: int = _setting(
        4, "calls of each kind (streaming, unary, health) one client certificate may have open"
    )
    first_message_timeout: float = _setting(
        10.0, "abort a call whose first request message does not arrive within this many seconds"
    )
    max_buffered_mib: int = _setting(
        128, "MiB of request messages the server holds in memory across all calls at most"
    )
    matching_workers: int | None = _setting(None, "processes for matching (default: every core)")
    dask_scheduler: str | None = _setting(
        None, "run matching on this Dask cluster (tcp://HOST:PORT)"
    )
    max_candidate_pairs: int = _setting(100_000_000, "fail a run that finds more candidate pairs")
    max_memory_gb: float = _setting(8.0, "fail a run whose encodings would need more memory")
    max_comparisons: int = _setting(
        10**12, "fail, before it starts, a run that would make more comparisons (not LSH)"
    )
    purge_interval: float = _setting(60.0, "seconds between retention purges")
    stream_idle_timeout: float = _setting(
        30.0, "abort an upload whose next message does not arrive within this many seconds"
    )
    stream_max_duration: float = _setting(
        3600.0, "abort an upload that is still streaming after this many seconds"
    )
    shutdown_grace: float = _setting(
        10.0, "seconds calls in flight and a running match get to finish on SIGTERM"
    )
    log_format: str = _setting("json", "log lines as JSON objects or as text", choices=LOG_FORMATS)
    log_level: str = _setting("info", "least severe level logged", choices=LOG_LEVELS)

    def data_path(self) -> Path:
        if self.data_dir is None:
            raise ConfigError(NO_DATA_DIR)
        return self.data_dir

    def call_limits(self) -> CallLimits:
        return CallLimits(
            self.max_streams, self.max_calls_per_certificate, self.max_buffered_mib * MIB
        )

    def server_tls(self) -> ServerTls | None:
        """The TLS files, or None for an insecure (loopback only) server."""
        if self.tls_dir:
            return ServerTls.from_dir(self.tls_dir)
        if self.tls_cert and self.tls_key and self.tls_client_ca:
            return ServerTls(self.tls_cert, self.tls_key, self.tls_client_ca)
        if self.insecure:
            return None
        raise ConfigError(
            "no TLS material: set tls_dir (or tls_cert, tls_key and tls_client_ca), or "
            "insecure for development on loopback"
        )


@dataclass(frozen=True)
class _Setting:
    name: str
    kind: type
    default: Any
    help: str
    aliases: tuple[str, ...]
    choices: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _settings() -> dict[str, _Setting]:
    hints = typing.get_type_hints(ServerConfig)
    result = {}
    for f in fields(ServerConfig):
        kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
        kind = kinds[0] if kinds else hints[f.name]
        meta = f.metadata
        result[f.name] = _Setting(
            f.name, kind, f.default, meta["help"], meta["aliases"], meta["choices"]
        )
    return result


SETTINGS = _settings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (defaulting to None, so that unset flags fall through)."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help=f"TOML file of settings (env: {CONFIG_ENV})"
    )
    for s in SETTINGS.values():
        where = f"config: {s.name}, env: {s.env}"
        default = "" if s.default is None else f"; default: {s.default}"
        options: dict[str, Any] = {"dest": s.name, "default": None}
        if s.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _parser_for(s.kind)
            options["metavar"] = "{" + ",".join(s.choices) + "}" if s.choices else s.name.upper()
        if s.choices:
            options["choices"] = s.choices
        parser.add_argument(s.flag, *s.aliases, help=f"{s.help} ({where}{default})", **options)


def load_config(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None
) -> ServerConfig:
    """The settings from flags (None: not given), the environment and the config file (the
    --config flag, else BLINDLINK_CONFIG, else none), checked."""
    values: dict[str, Any] = {}
    path = config_file or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if path is not None:
        values.update(read_config_file(path))
    values.update(_from_environment(environ))
    values.update({k: v for k, v in flags.items() if k in SETTINGS and v is not None})
    config = replace(ServerConfig(), **values)
    check(config)
    return config


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings a TOML file holds, typed; relative paths resolved against its directory."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    values = {}
    for key, value in document.items():
        setting = SETTINGS.get(key)
        if setting is None:
            known = ", ".join(SETTINGS)
            raise ConfigError(f"config file {path}: unknown setting '{key}' (known: {known})")
        values[key] = _typed(setting, value, f"config file {path}: setting '{key}'")
        if setting.kind is Path:
            values[key] = Path(path).parent / values[key]
    return values


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for s in SETTINGS.values():
        if s.env in environ:
            try:
                values[s.name] = _parser_for(s.kind)(environ[s.env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ConfigError(f"{s.env}: {exc}") from None
    return values


def _typed(setting: _Setting, value: Any, where: str) -> Any:
    kind = setting.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    expected = str if kind is Path else kind
    if not isinstance(value, expected) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise ConfigError(f"{where} must be {names[expected]}, not {type(value).__name__}")
    return value


def _parser_for(kind: type) -> Callable[[str], Any]:
    return {bool: _parse_bool, int: _parse_int, float: _parse_float}.get(kind, kind)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false, 1/0, yes/no)")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def check(config: ServerConfig) -> None:
    """Raise ConfigError naming the first setting that is missing, out of range or
    inconsistent with another."""
    config.data_path()
    for name in (
        "matching_workers",
        "max_candidate_pairs",
        "max_comparisons",
        "max_streams",
        "max_calls_per_certificate",
    ):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, not {value}")
    for name in (
        "max_memory_gb",
        "purge_interval",
        "stream_idle_timeout",
        "stream_max_duration",
        "first_message_timeout",
    ):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name} must be a positive number of seconds or GB")
    _check_calls(config)
    if not config.shutdown_grace >= 0:
        raise ConfigError("shutdown_grace must be zero or more seconds")
    for s in SETTINGS.values():
        if s.choices and getattr(config, s.name) not in s.choices:
            raise ConfigError(f"{s.name} must be one of {', '.join(s.choices)}")
    for name in ("listen", "metrics_listen"):
        if getattr(config, name) is not None:
            host_and_port(getattr(config, name), name)
    _check_tls(config)


def _check_calls(config: ServerConfig) -> None:
    if config.rpc_workers < 2:
        raise ConfigError(
            f"rpc_workers must be at least 2 (streaming calls and unary calls each need one), "
            f"not {config.rpc_workers}"
        )
    if config.max_streams is not None and config.max_streams >= config.rpc_workers:
        raise ConfigError(
            f"max_streams must be less than rpc_workers ({config.rpc_workers}): the rest of "
            "the threads serve unary calls"
        )
    if config.max_buffered_mib * MIB < MAX_RECEIVE_BYTES:
        raise ConfigError(
            f"max_buffered_mib must be at least {MAX_RECEIVE_BYTES // MIB}, the largest message"
        )


def host_and_port(address: str, name: str) -> tuple[str, int]:
    """HOST:PORT (or [IPV6]:PORT) split into the host and the port number."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


def _check_tls(config: ServerConfig) -> None:
    files = {"tls_cert": config.tls_cert, "tls_key": config.tls_key}
    files["tls_client_ca"] = config.tls_client_ca
    given = [name for name, value in files.items() if value is not None]
    if config.insecure and (given or config.tls_dir):
        raise ConfigError("insecure contradicts the TLS settings given; choose one")
    if config.tls_dir and given:
        raise ConfigError(f"tls_dir and {', '.join(given)} both name TLS files; choose one")
    if given and len(given) < len(files):
        missing = ", ".join(sorted(set(files) - set(given)))
        raise ConfigError(f"{', '.join(given)} given without {missing}")
    if config.metrics_tls and config.insecure:
        raise ConfigError("metrics_tls needs the server's TLS files; insecure has none")
    config.server_tls()
