"""The kit's configuration: one TOML file, validated at start.

Every section forbids unknown keys and describes each field, so a typo in
/etc/tpskit/config.toml is refused with the key, the value and what is allowed.
Secrets are never in the file itself: fields ending in ``_file`` name files; the
broker password (``mqtt.password_file``, read by ``read_secret``) is looked up under
``$CREDENTIALS_DIRECTORY`` (systemd LoadCredential) first.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PATH = Path("/etc/tpskit/config.toml")

KODE_WILAYAH_PATTERN = r"^\d{2}\.\d{2}\.\d{2}\.\d{4}$"

# Places whose content is lost at reboot: the kit's data must never live there.
VOLATILE_DIRS = (Path("/run"), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/var/run"))


def is_volatile(path: Path) -> bool:
    """True if *path* lies under a directory that does not survive a reboot."""
    path = Path(os.path.abspath(path))
    return any(path == d or d in path.parents for d in VOLATILE_DIRS)


def _none_word(value: object) -> object:
    """TOML has no null: the word "none" switches an optional part off."""
    return None if isinstance(value, str) and value.strip().lower() == "none" else value


OptionalPin = Annotated[int | None, BeforeValidator(_none_word)]
"""A BCM pin number, or "none" in the TOML file when the part is not fitted."""


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KitConfig(Section):
    """Who this kit is: the TPS it serves."""

    kit_id: str = Field("tpskit-dev", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                        description="Unique kit name, also the MQTT client id.")
    kode_wilayah: str = Field("00.00.00.0000", pattern=KODE_WILAYAH_PATTERN,
                              description="Kemendagri region code provinsi.kabkota.kecamatan.desa, "
                                          "e.g. 31.71.01.1001.")
    tps: int = Field(1, ge=1, le=999, description="TPS number within the desa/kelurahan.")
    dpt: int | None = Field(None, ge=1, le=1000,
                            description="Registered voters (DPT) of this TPS, if known at provisioning. The "
                                        "reader compares it with the DPT written on the form (page 1, I.A "
                                        "JML): a difference sends the page to review.")

    def known(self) -> dict[str, int]:
        """What the kit knows of its TPS before the count (``inference.templates.KNOWN_FACTS``), for
        ``inference.reader.PageReader(known=...)``."""
        return {} if self.dpt is None else {"dpt": self.dpt}


class PathsConfig(Section):
    """Where the kit keeps its data."""

    state_dir: Path = Field(Path("/var/lib/tpskit"),
                            description="Database, photos and keys. Must survive reboots "
                                        "(never /run or /tmp).")
    model: Path | None = Field(None,
                               description="Digit model (.tflite); empty = the model shipped in the package.")
    min_free_mb: int = Field(50, ge=1, le=100_000,
                             description="Refuse a capture (error pattern, kit stays ready) when the state "
                                         "filesystem has less free space than this.")
    volatile_ok: bool = Field(False, description="Allow state_dir on a volatile place (/run, /tmp, tmpfs). "
                                                 "Only for tests and demos: data there is lost at reboot.")

    @model_validator(mode="after")
    def _persistent(self) -> PathsConfig:
        if not self.volatile_ok and is_volatile(self.state_dir):
            raise ValueError(f"state_dir {str(self.state_dir)!r} is lost at reboot (under /run or /tmp); "
                             "use a persistent directory such as /var/lib/tpskit")
        return self


class CameraConfig(Section):
    """Camera backend and its fixed settings (chosen by `tpskit calibrate`)."""

    backend: Literal["picamera2", "folder", "v4l2"] = Field(
        "picamera2", description="picamera2 on the Pi; folder replays images (demo, tests, soak); "
                                 "v4l2 is a USB camera through OpenCV.")
    folder: Path | None = Field(None, description="For backend=folder: directory of images, one per press.")
    loop: bool = Field(False,
                       description="For backend=folder: start again at the first image after the last.")
    device: int = Field(0, ge=0, description="For backend=v4l2: /dev/videoN index.")
    width: int = Field(4608, ge=320, le=10000, description="Still width in pixels.")
    height: int = Field(2592, ge=240, le=10000, description="Still height in pixels.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="A capture taking longer than this is an error.")
    exposure_us: int | None = Field(None, ge=100, le=1_000_000,
                                    description="Fixed exposure time; None = auto.")
    analogue_gain: float | None = Field(None, ge=1.0, le=16.0, description="Fixed gain; None = auto.")
    lens_position: float | None = Field(None, ge=0.0, le=15.0,
                                        description="Fixed focus in dioptres (1/m); None = autofocus once.")
    awb_gains: tuple[float, float] | None = Field(None, description="Fixed (red, blue) white-balance gains.")
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of stored photos.")


class GpioConfig(Section):
    """Pins (BCM numbering) of the button, LEDs and buzzer."""

    button: int = Field(17, ge=0, le=27, description="Capture button to GND (internal pull-up).")
    hold_s: float = Field(3.0, ge=1.0, le=10.0,
                          description="A press this long is a long press (status, resend).")
    bounce_s: float = Field(0.05, ge=0.0, le=0.5, description="Debounce time of the button.")
    led_green: OptionalPin = Field(22, ge=0, le=27, description="Green LED (ready / ok).")
    led_yellow: OptionalPin = Field(23, ge=0, le=27, description="Yellow LED (busy / review / queued).")
    led_red: OptionalPin = Field(24, ge=0, le=27, description="Red LED (retake / error / low battery).")
    buzzer: OptionalPin = Field(25, ge=0, le=27, description="Active buzzer; \"none\" = no buzzer.")
    pin_factory: Literal["default", "mock", "lgpio", "rpigpio", "native"] = Field(
        "default", description="gpiozero pin factory: default = gpiozero's choice (lgpio on bookworm); "
                               "mock = no hardware (laptop demo, tests, soak).")
    verdict_s: float = Field(30.0, ge=1.0, le=3600,
                             description="How long the ok/review/retake pattern stays before plain 'ready'.")


class MqttConfig(Section):
    """Broker connection; the outbox is the source of truth, MQTT only carries it."""

    url: str = Field("mqtts://localhost:8883", pattern=r"^mqtts?://[^/\s]+(:\d+)?/?$",
                     description="mqtt://host:port (loopback/dev) or mqtts://host:port (TLS, production).")
    username: str | None = Field(None, description="Per-kit username (or use a client certificate).")
    password_file: Path | None = Field(None, description="File holding the password.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker; None = system store.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM), if the broker uses them.")
    key_file: Path | None = Field(None, description="Client certificate key (PEM).")
    topic_prefix: str = Field("tpskit/v1", pattern=r"^[A-Za-z0-9_/-]+$", description="Root of all topics.")
    keepalive_s: int = Field(60, ge=10, le=1200, description="MQTT keepalive.")
    heartbeat_s: int = Field(300, ge=10, le=3600, description="Seconds between heartbeats.")
    backoff_max_s: float = Field(120.0, ge=1.0, le=3600, description="Longest wait between reconnects.")
    ack_timeout_s: float = Field(60.0, ge=1.0, le=3600,
                                 description="Resend a message the broker took but the collector has not "
                                             "acked after this long (doubling while no ack arrives).")
    max_inflight: int = Field(64, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once.")
    protocol: Literal["mqtt5", "mqtt311"] = Field("mqtt5",
                                                  description="MQTT 5 (default) or 3.1.1 for old brokers.")
    pack_max_bytes: int = Field(16_384, ge=0, le=262_144,  # the broker's message_size_limit (header included)
                                description="While a backlog drains, pack signed readings of one topic into "
                                            "MQTT messages up to this size; 0 = one reading per message "
                                            "(for collectors older than packs).")
    pack_max_count: int = Field(100, ge=1, le=1000, description="Most readings in one pack.")
    collector_key_file: Path | None = Field(None, description="Public key (base64 or PEM) of the collectors; "
                                                       "when set, only acks they signed mark messages acked.")


class OutboxConfig(Section):
    """The store-and-forward queue."""

    max_bytes: int = Field(2_000_000_000, ge=1_000_000, description="Refuse new messages beyond this size.")
    retention_days: int = Field(30, ge=1, le=3650, description="Acked messages are purged after this.")
    # Base64 makes a chunk 4/3 larger, and the signed envelope adds at most 4096 bytes: a chunk message must
    # fit the broker's message_size_limit (262,144 bytes, comms/mosquitto/mosquitto.conf), so at most
    # (262,144 − 4,096) · 3/4 = 193,536 raw bytes (comms.payloads.MAX_CHUNK_BYTES); rounded down.
    chunk_bytes: int = Field(64_000, ge=4_000, le=192_000,
                             description="Raw photo bytes per chunk message (at most 192,000: a chunk "
                                         "travels as base64 and must fit the broker's 256 KiB "
                                         "message_size_limit).")


class SigningConfig(Section):
    """The kit's Ed25519 identity."""

    key_file: Path | None = Field(None, description="Private key; None = <state_dir>/keys/kit.key.")


class ReaderConfig(Section):
    """How strict the page reader is."""

    confidence: float = Field(0.99, gt=0.5, lt=1.0,
                              description="Posterior each number needs on its own (digits, bubbles and "
                                          "rules together) for an ok page, on top of max_error; numbers "
                                          "below it are named in the review reason.")
    max_error: float = Field(3e-3, gt=0.0, le=0.05,
                             description="A page is accepted (ok) only if the chance that any of its numbers "
                                         "is wrong, given the digits, bubbles and rules, is at most this.")
    min_support: float = Field(0.5, ge=0.0, le=1.0,
                               description="A value the rules or bubbles pick must be at least this "
                                           "probable, by its own boxes, relative to what the boxes favour "
                                           "(0.5: a rule only breaks a near tie and a slip with a doubtful "
                                           "digit stays review; 0.1: the arithmetic also settles a 1 the "
                                           "model rates 7: 0.7 / 1: 0.3, and may explain such a slip away).")
    min_support_far: float = Field(0.02, ge=0.0, le=1.0,
                                   description="The same where what the boxes favour is more than 10 away "
                                               "from the value picked (a 1 read as 7 in the hundreds): no "
                                               "plausible slip, so the page posterior decides, as long as "
                                               "the box gives the digit at least this share of its "
                                               "favourite's probability. Never stricter than min_support.")
    min_px_per_mm: float = Field(2.0, gt=0.5, le=20, description="Below this the photo is refused (retake).")

    def options(self) -> dict:
        """Keyword options for ``inference.reader.PageReader``."""
        return self.model_dump()


class PowerConfig(Section):
    """Battery and low-battery shutdown."""

    low_battery_pin: OptionalPin = Field(None, ge=0, le=27,
                                        description="GPIO line from the UPS HAT, active low; "
                                                    "\"none\" = not wired.")
    fuel_gauge: Literal["none", "max17040"] = Field("none", description="I2C fuel gauge, if fitted.")
    critical_percent: float = Field(5.0, ge=0, le=50, description="Shut down cleanly at or below this level.")
    warn_percent: float = Field(15.0, ge=0, le=80, description="Warn the KPPS at or below this level.")
    shutdown_command: list[str] = Field(["systemctl", "poweroff"], description="Run after a clean stop.")

    @model_validator(mode="after")
    def _levels(self) -> PowerConfig:
        if self.critical_percent > self.warn_percent:
            raise ValueError(f"critical_percent ({self.critical_percent}) must not be above "
                             f"warn_percent ({self.warn_percent})")
        return self


class SoakConfig(Section):
    """Automatic presses for long runs and fault tests."""

    enabled: bool = Field(False, description="Generate presses automatically.")
    interval_s: float = Field(2.0, ge=0.0, le=3600, description="Seconds between generated presses.")
    presses: int = Field(0, ge=0, description="Stop after this many presses; 0 = run until stopped.")


class Config(Section):
    """The whole kit configuration."""

    kit: KitConfig = Field(default_factory=KitConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    gpio: GpioConfig = Field(default_factory=GpioConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    signing: SigningConfig = Field(default_factory=SigningConfig)
    reader: ReaderConfig = Field(default_factory=ReaderConfig)
    power: PowerConfig = Field(default_factory=PowerConfig)
    soak: SoakConfig = Field(default_factory=SoakConfig)

    @property
    def db_path(self) -> Path:
        return self.paths.state_dir / "tpskit.db"

    @property
    def signing_key_path(self) -> Path:
        return self.signing.key_file or self.paths.state_dir / "keys" / "kit.key"


def _field_help(loc: tuple) -> tuple[str | None, list[str]]:
    """The description of the field at *loc* and the keys allowed in its section."""
    model: type[BaseModel] | None = Config
    description = None
    allowed: list[str] = []
    for part in loc:
        if model is None or not isinstance(part, str):
            break
        allowed = sorted(model.model_fields)
        field = model.model_fields.get(part)
        if field is None:
            break
        description = field.description
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return description, allowed


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    description, allowed = _field_help(err["loc"])
    if err["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in err["loc"][:-1]) or "top level"
        return (f"unknown key '{loc}' (value {err.get('input')!r}): remove it or check its spelling; "
                f"allowed in {section}: {', '.join(allowed)}")
    msg = err["msg"].removeprefix("Value error, ")
    text = f"'{loc}' = {err.get('input')!r}: {msg}"
    if description and err["type"] != "model_type" and err["loc"]:
        text += f" ({description})"
    return text


def parse(data: dict) -> Config:
    """Validate a dict (as read from TOML); raise ConfigError naming every bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"invalid configuration:\n  {lines}") from None


def load(path: Path | str | None = None) -> Config:
    """Read and validate the TOML file at *path* (default /etc/tpskit/config.toml)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found: run 'sudo tpskit provision' or pass --config"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: save it as UTF-8 "
                          "(or write it again with 'sudo tpskit provision')") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc}): "
                          "check the path and its permissions (run as root or the tpskit user)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_secret(path: Path | str | None) -> str | None:
    """Read a secret file, preferring $CREDENTIALS_DIRECTORY/<name> (systemd LoadCredential)."""
    if path is None:
        return None
    path = Path(path)
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = [Path(cred_dir) / path.name] if cred_dir else []
    candidates.append(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    raise ConfigError(f"secret file {path} not found (also looked in $CREDENTIALS_DIRECTORY)")
