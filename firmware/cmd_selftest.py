"""`tpskit selftest`: check every part of the kit and print a readiness verdict (then publish it)."""

from __future__ import annotations

import argparse
import json
import sys

from firmware.argtypes import seconds

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_CONFIG = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--skip", action="append", default=[], metavar="CHECK",
                   help="skip a check (repeat or comma-separate): camera, button, leds, model, storage, "
                        "clock, battery, broker, collector; a skipped check is not tested, so the verdict is "
                        "'ready except skipped' (not ready, exit 1) and the readiness names it")
    p.add_argument("--button-timeout", type=seconds, default=20.0,
                   help="seconds to wait for the button press")
    p.add_argument("--ack-timeout", type=seconds, default=20.0,
                   help="seconds to wait for the collector's ack")
    p.add_argument("--no-publish", action="store_true", help="do not queue/publish the readiness message")
    p.add_argument("--yes", action="store_true", help="do not ask whether the LEDs and buzzer worked")


def _confirm(question: str) -> bool | None:
    try:
        answer = input(question + " ").strip().lower()
    except EOFError:
        return None
    return answer[:1] in ("y", "ya", "")


def run(args: argparse.Namespace) -> int:
    from firmware import config as cfg
    from firmware.selftest import CHECKS, SelfTestOptions, publish_after_selftest, run_selftest, save_report

    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        print(f"tpskit selftest: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    skip = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    unknown = skip - set(CHECKS)
    if unknown:
        print(f"tpskit selftest: --skip {sorted(unknown)} tidak dikenal; pilih dari {', '.join(CHECKS)}",
              file=sys.stderr)
        return EXIT_CONFIG
    from firmware.hardware import make_pin_factory

    out = sys.stderr if args.json else sys.stdout
    interactive = sys.stdin.isatty() and not args.json and not args.yes
    options = SelfTestOptions(
        pin_factory=make_pin_factory(config.gpio.pin_factory), skip=skip,
        button_timeout_s=args.button_timeout, ack_timeout_s=args.ack_timeout,
        prompt=lambda text: print(text, file=out, flush=True),
        confirm=_confirm if interactive else None)
    report = run_selftest(config, options)
    save_report(config, report)
    published = None
    if not args.no_publish:
        msg_id, state = publish_after_selftest(config, report)
        published = {"id": msg_id, "state": state}
    from firmware.provision import fix_state_ownership

    fix_state_ownership(config.paths.state_dir)  # run as root: the daemon must still own its files
    if args.json:
        print(json.dumps({**report.to_dict(), "readiness_message": published}, indent=2, ensure_ascii=False))
    else:
        print(report.text())
        if published:
            where = {"acked": "diterima collector", "sent": "terkirim ke broker",
                     "queued": "antre, dikirim saat sinyal ada"}.get(published["state"], published["state"])
            print(f"Status kesiapan dipublikasikan / readiness published: {where}")
    return EXIT_READY if report.ready else EXIT_NOT_READY
