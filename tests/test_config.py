"""Config errors name the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from firmware import config
from firmware.config import ConfigError


def error_of(text: str, tmp_path) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return str(info.value)


def test_defaults_are_valid():
    cfg = config.parse({})
    assert cfg.db_path.name == "tpskit.db"
    assert cfg.gpio.hold_s == 3.0


def test_unknown_key_names_key_value_and_allowed(tmp_path):
    text = error_of("[gpio]\nbuton = 27\n", tmp_path)
    assert "gpio.buton" in text and "27" in text
    assert "allowed in gpio" in text and "button" in text


def test_unknown_section(tmp_path):
    text = error_of("[camra]\nbackend = 'folder'\n", tmp_path)
    assert "'camra'" in text and "camera" in text


def test_bad_choice_lists_choices(tmp_path):
    text = error_of("[camera]\nbackend = 'usb'\n", tmp_path)
    assert "camera.backend" in text and "'usb'" in text
    assert "'picamera2', 'folder' or 'v4l2'" in text


def test_out_of_range_value(tmp_path):
    text = error_of("[gpio]\nhold_s = 0.2\n", tmp_path)
    assert "gpio.hold_s" in text and "0.2" in text and "greater than or equal to 1" in text
    # a TPS without voters does not exist (provision refuses it too): the reader would compare page 1 with it
    text = error_of("[kit]\ndpt = 0\n", tmp_path)
    assert "kit.dpt" in text and "greater than or equal to 1" in text


def test_bad_type_and_pattern(tmp_path):
    text = error_of("[kit]\ntps = 'satu'\nkode_wilayah = '3171011001'\n", tmp_path)
    assert "kit.tps" in text and "'satu'" in text
    assert "kit.kode_wilayah" in text and "'3171011001'" in text


def test_every_error_is_reported_at_once(tmp_path):
    text = error_of("[gpio]\nbutton = 99\nled_red = -1\n", tmp_path)
    assert "gpio.button" in text and "gpio.led_red" in text


def test_volatile_state_dir_refused(tmp_path):
    text = error_of("[paths]\nstate_dir = '/run/tpskit'\n", tmp_path)
    assert "/run/tpskit" in text and "persistent" in text
    ok = tmp_path / "ok.toml"
    ok.write_text("[paths]\nstate_dir = '/run/tpskit'\nvolatile_ok = true\n")
    assert str(config.load(ok).paths.state_dir) == "/run/tpskit"


def test_power_levels_consistent(tmp_path):
    text = error_of("[power]\ncritical_percent = 30\nwarn_percent = 10\n", tmp_path)
    assert "critical_percent" in text and "warn_percent" in text


def test_not_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error_of("[kit\n", tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def test_unreadable_config_is_a_clear_error(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00[kit]\n")  # e.g. saved as UTF-16 by a Windows editor
    with pytest.raises(ConfigError, match="binary.toml.*UTF-8"):
        config.load(binary)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="folder.toml.*cannot be read"):
        config.load(folder)


def test_unreadable_config_through_the_cli_exits_2(tmp_path, capsys):
    from firmware.cli import main

    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe\x00")
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert "config.toml" in err and "Traceback" not in err


def test_every_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, config.BaseModel):
                assert ann.__doc__, f"section {name} has no docstring"
                walk(ann)
            else:
                assert field.description, f"{model.__name__}.{name} has no description"
    walk(config.Config)


def test_secret_prefers_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt.pass").write_text("rahasia\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.read_secret("/etc/tpskit/mqtt.pass") == "rahasia"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="not found"):
        config.read_secret(tmp_path / "missing")


def test_none_switches_an_optional_part_off():
    """TOML has no null: 'none' means the LED, buzzer or battery line is not fitted."""
    from firmware.config import parse

    cfg = parse({"gpio": {"buzzer": "none", "led_yellow": "None"}, "power": {"low_battery_pin": "none"}})
    assert cfg.gpio.buzzer is None and cfg.gpio.led_yellow is None and cfg.power.low_battery_pin is None
    assert cfg.gpio.led_green == 22
    with pytest.raises(ConfigError, match="gpio.buzzer"):
        parse({"gpio": {"buzzer": "off"}})


def test_packing_is_configurable_and_reaches_the_courier(tmp_path):
    """[mqtt] pack_max_bytes = 0 sends one reading per message (collectors older than packs)."""
    from comms.courier import Courier
    from comms.signing import generate_key

    cfg = config.parse({"mqtt": {"pack_max_bytes": 0}})
    courier = Courier.from_config(cfg, signing_key=generate_key(), db_path=tmp_path / "tpskit.db")
    try:
        assert courier.pack_max_bytes == 0 and courier.pack_max_count == 100
    finally:
        courier.close()
    with pytest.raises(ConfigError, match="mqtt.pack_max_count"):
        config.parse({"mqtt": {"pack_max_count": 0}})


def test_reader_max_error_default_is_the_readers():
    """[reader] max_error: the page reader's own default (kept in step; config stays free of cv2)."""
    from inference.reader import MAX_ERROR

    assert config.parse({}).reader.max_error == MAX_ERROR
    with pytest.raises(ConfigError, match="reader.max_error"):
        config.parse({"reader": {"max_error": 0.5}})


def test_reader_min_support_default_is_the_readers():
    from inference.reader import MIN_SUPPORT

    assert config.parse({}).reader.min_support == MIN_SUPPORT
    assert config.parse({"reader": {"min_support": 0.5}}).reader.min_support == 0.5
    with pytest.raises(ConfigError, match="reader.min_support"):
        config.parse({"reader": {"min_support": 1.5}})


def test_reader_options_are_the_page_readers_defaults():
    import inspect

    from inference.reader import MIN_SUPPORT_FAR, PageReader

    opts = config.parse({}).reader.options()
    defaults = {k: p.default for k, p in inspect.signature(PageReader).parameters.items()
                if p.default is not inspect.Parameter.empty and k not in ("form", "known")}
    assert opts == defaults  # every [reader] key is a PageReader option, with the same default
    # (``known`` is the TPS's, from [kit]: KitConfig.known())
    assert opts["min_support_far"] == MIN_SUPPORT_FAR
    cfg = config.parse({"reader": {"min_support_far": 0.05}})
    reader = PageReader(classifier=None, **cfg.reader.options())
    assert reader.min_support_far == 0.05
    with pytest.raises(ConfigError, match="reader.min_support_far"):
        config.parse({"reader": {"min_support_far": -1}})
