"""`tpskit run`: the daemon systemd starts (Type=notify; READY=1 once camera, model and DB are open)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--soak", action="store_true", help="generate presses automatically (config [soak])")
    parser.add_argument("--presses", type=int, default=None, help="soak: stop after N presses (0 = never)")
    parser.add_argument("--interval", type=float, default=None, help="soak: seconds after a verdict")
    parser.add_argument("--mock-gpio", action="store_true", help="no GPIO hardware (gpiozero MockFactory)")
    parser.add_argument("--no-send", action="store_true", help="store only, no MQTT (bench, offline tests)")


def run(args: argparse.Namespace) -> int:
    from firmware import config as config_mod
    from firmware.memory import tune_malloc

    tune_malloc()  # before the big imports and the first photo

    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = config_mod.load(args.config)
        if args.mock_gpio:
            cfg.gpio.pin_factory = "mock"
        if args.soak:
            cfg.soak.enabled = True
        if args.presses is not None:
            cfg.soak.presses = args.presses
        if args.interval is not None:
            cfg.soak.interval_s = args.interval
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"tpskit run: {exc}", file=sys.stderr)
        return 2  # (tpskit.service does not restart on 2: a restart or reboot would not mend the config)

    from firmware.app import FAULT_REBOOT_AFTER_S, build_kit, run_shutdown_command
    from firmware.notify import SystemdNotifier

    notifier = SystemdNotifier(unset_environment=True)
    power_off = None if notifier.enabled else (lambda: run_shutdown_command(cfg.power.shutdown_command))
    # under systemd a part that stays down gets one reboot (tpskit.service reboots on EXIT_REBOOT); not with
    # a state directory a reboot empties: the marker that allows only one would go, and the Pi would loop
    lasting = not config_mod.is_volatile(cfg.paths.state_dir)
    reboot_after = FAULT_REBOOT_AFTER_S if notifier.enabled and lasting else None
    try:
        kit = build_kit(cfg, notifier=notifier, with_courier=not args.no_send, power_off=power_off,
                        fault_reboot_after_s=reboot_after,
                        say=lambda text: logging.getLogger("tpskit.kpps").info("%s", text))
    except Exception as exc:  # noqa: BLE001 - every start failure gets one clear line, then exit 1
        text = str(exc) or type(exc).__name__
        if type(exc).__name__ in ("BadPinFactory", "PinFactoryFallback"):
            text += " (no GPIO on this machine: pass --mock-gpio or set gpio.pin_factory = 'mock')"
        print(f"tpskit run: cannot start: {text}", file=sys.stderr)
        notifier.status(f"cannot start: {text}")
        return 1

    def on_signal(signum, _frame):
        kit.stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    presser = None
    if cfg.soak.enabled:
        from firmware.soak import SoakPresser

        presser = SoakPresser(kit, interval_s=cfg.soak.interval_s, presses=cfg.soak.presses)
        kit.on_verdict.append(lambda v: print(f"[soak] {v.pattern:6s} {v.latency_ms:7.0f} ms", flush=True))
    try:
        if presser is not None:
            kit.start()
            presser.start()
        return kit.run()
    finally:
        if presser is not None:
            presser.stop()
        kit.close()
