"""Helpers for the provision/selftest/fleet tests: provisioned kits in tmp dirs, a page folder camera,
and a patient button presser."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from firmware import config as cfg
from firmware.provision import ProvisionRequest, provision


def make_kit(root: Path, *, kode_wilayah: str = "31.71.01.1001", tps: int = 5, broker_url: str,
             kit_id: str | None = None, photos: Path | None = None, model: Path | None = None,
             registry: Path | None = None) -> cfg.Config:
    """Provision a kit under *root* (config, password credential, key) and return its loaded config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pw").write_text("rahasia\n")
    conf_path = root / "config.toml"
    res = provision(ProvisionRequest(kode_wilayah=kode_wilayah, tps=tps, broker=broker_url,
                                     username=kit_id or f"user-{tps}", password_file=root / "pw",
                                     dpt=250, kit_id=kit_id, state_dir=root / "state"),
                    config_out=conf_path, volatile_ok=True)
    if registry is not None:
        from comms.signing import registry_add

        registry_add(registry, res.kit_id, res.public_key, kode_wilayah=kode_wilayah, tps=tps)
    text = conf_path.read_text()
    text += '\n[camera]\nbackend = "folder"\nloop = true\n'
    if photos is not None:
        text += f'folder = "{photos}"\n'
    text += '\n[gpio]\npin_factory = "default"\n'
    if model is not None:
        text = text.replace("[paths]\n", f'[paths]\nmodel = "{model}"\n')
    conf_path.write_text(text)
    return cfg.load(conf_path)


def page_photos(folder: Path, *, seed: int = 7) -> Path:
    """A folder with one generated photo of page 1 (inference.synth)."""
    from inference.synth import make_sample

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "page1.jpg").write_bytes(make_sample(seed, 1, condition="clean", scale=0.3).jpeg)
    return folder


class Presser:
    """Presses a MockFactory button again and again (a patient technician) until stopped."""

    def __init__(self, factory, pin: int, *, every_s: float = 0.05):
        self.pin = factory.pin(pin)
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.pin.drive_low()
                time.sleep(self.every_s)
                self.pin.drive_high()
            except Exception:  # noqa: BLE001 - a device closing mid-press raises in gpiozero's callback
                pass
            time.sleep(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

