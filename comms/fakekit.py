"""A stand-in kit process for fault tests and benchmarks: ``python -m comms.fakekit``.

Submits readings ``c000000 .. c<N-1>`` (idempotent: a restarted process re-submits them all and only the
missing ones are queued), with an optional small photo every K readings, while the Courier sends, then
waits until everything is acked and exits 0. Meant to be SIGKILLed at random moments and restarted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m comms.fakekit")
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--key", required=True, type=Path, help="kit key file (created if missing)")
    p.add_argument("--broker", required=True)
    p.add_argument("--kit-id", default="kit-1")
    p.add_argument("--kode-wilayah", default="31.71.01.1001")
    p.add_argument("--tps", type=int, default=7)
    p.add_argument("--count", type=int, default=50)
    p.add_argument(
        "--photo-every", type=int, default=0, help="attach a photo to every Nth reading (0 = none)"
    )
    p.add_argument("--photo-bytes", type=int, default=20_000)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between submissions")
    p.add_argument("--ack-timeout", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=120.0, help="give up waiting for acks after this")
    p.add_argument("--no-send", action="store_true", help="only queue, do not start the link")
    p.add_argument("--linger", type=float, default=0.0, help="stay connected this long after all is acked")
    args = p.parse_args(argv)

    from comms.courier import Courier
    from comms.signing import load_or_create_private_key

    key = load_or_create_private_key(args.key)
    courier = Courier(
        db_path=args.db,
        kit_id=args.kit_id,
        kode_wilayah=args.kode_wilayah,
        tps=args.tps,
        signing_key=key,
        broker_url=args.broker,
        ack_timeout_s=args.ack_timeout,
        backoff_base_s=0.2,
        backoff_max_s=2.0,
        heartbeat_s=30,
        chunk_bytes=8_000,
    )
    if not args.no_send:
        courier.start()
    for i in range(args.count):
        photo = None
        if args.photo_every and i % args.photo_every == 0:
            photo = (f"JPEG{i:06d}".encode() * (args.photo_bytes // 10 + 1))[: args.photo_bytes]
        courier.submit_reading(
            capture_id=f"c{i:06d}",
            halaman=1 + i % 4,
            reading={
                "paslon": {"01": i % 300, "02": (7 * i) % 300},
                "sah": 250,
                "tidak_sah": i % 5,
                "status": "ok",
            },
            photo_jpeg=photo,
            taken_at=1_700_000_000.0 + i,
            time_source="rtc",
        )
        if args.interval:
            time.sleep(args.interval)
    if args.no_send:
        courier.close()
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        st = courier.status()
        if st["queued"] == 0 and st["sent"] == 0:
            print(json.dumps(st), flush=True)
            time.sleep(args.linger)
            courier.stop(timeout=3)
            print(json.dumps(courier.status()))
            return 0
        time.sleep(0.1)
    print(json.dumps(courier.status()), file=sys.stderr)
    courier.stop(timeout=3)
    return 1


if __name__ == "__main__":
    sys.exit(main())
