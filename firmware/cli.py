"""The `tpskit` command: one entry point, one module per subcommand.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
`tpskit status` starts fast on a Pi Zero 2 W.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# OpenCV reads its decoding limit once, when it loads (OPENCV_IO_MAX_IMAGE_PIXELS, default 2^30 px), which
# let a header claiming 30000 x 30000 px allocate gigabytes (the OOM killer on a 512 MB Pi Zero 2 W).
# 2^27 px (134 MP) passes a Camera Module 3 still (12 MP) and a scan of the 600 x 900 mm plano.
MAX_IMAGE_PIXELS = 1 << 27
# the daemon only decodes its camera's stills (and a folder camera's photos), on a Pi Zero 2 W: 2^25 (33 MP,
# ~100 MB as BGR) is all it ever needs and what it can hold
RUN_MAX_IMAGE_PIXELS = 1 << 25

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("firmware.cmd_run", "run the kit (the daemon started by systemd)"),
    "read": ("firmware.cmd_read", "read photos of C.HASIL pages, no hardware"),
    "status": ("firmware.cmd_status", "queue depth, last captures, readiness"),
    "demo": ("firmware.cmd_demo", "end-to-end demo on a laptop: pages, broker, collector"),
    "provision": ("firmware.cmd_provision", "set the kit's identity, broker and key (H-1)"),
    "calibrate": ("firmware.cmd_calibrate", "check the stand and camera, store camera settings"),
    "selftest": ("firmware.cmd_selftest", "check every part of the kit, print a readiness verdict"),
    "fleet": ("firmware.cmd_fleet", "operators: readiness of all kits, results per TPS, by region"),
    "collector": ("comms.cmd_collector", "reference collector: verify, store and ack kit messages"),
    "export": ("comms.cmd_bundle", "write unsent signed messages to a USB stick as one bundle"),
    "import": ("comms.cmd_bundle", "publish a bundle exported by a kit"),
}

CONFIG_HELP = "config TOML (default /etc/tpskit/config.toml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpskit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also after the command name (`tpskit status --config FILE`); SUPPRESS keeps a value given before it
        p.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="more log output")
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()  # (the command modules import cv2 only in run())
    args = parser.parse_args(argv)
    # before cv2 is imported; a value the user set is kept
    limit = RUN_MAX_IMAGE_PIXELS if args.command == "run" else MAX_IMAGE_PIXELS
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(limit))
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
