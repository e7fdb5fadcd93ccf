#!/usr/bin/env python3
"""Collector storage speed, SQLite vs PostgreSQL: signed readings stored per second through CollectorStore.

Signatures are checked before the clock starts (``precheck``), so this measures the database side only:
new readings, then the same readings again (duplicates), in batches like the collector's. PostgreSQL is a
throw-away local cluster (tests/pg.py) with fsync on, over loopback TCP; a database on another host adds
its round-trip time to every statement (2 per new reading, 4 per duplicate).

    python scripts/bench_collector_store.py [--readings 5000] [--batch 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comms import payloads, topics  # noqa: E402
from comms.collector_store import CollectorStore, precheck  # noqa: E402
from comms.signing import KitEntry, generate_key  # noqa: E402

KW, TPS = "31.71.01.1001", 7


def _messages(n: int) -> list:
    key = generate_key()
    registry = {"kit-1": KitEntry("kit-1", key.verify_key, KW, TPS)}
    topic = topics.topic(topics.DEFAULT_PREFIX, KW, TPS, "reading")
    out = []
    for i in range(n):
        body = payloads.reading_body(
            capture_id=f"c{i}", halaman=1, reading={"suara": {"01": i % 300, "02": 7}}, taken_at=1.0,
            time_source="rtc", photo=None, chunk_bytes=1000,
        )  # fmt: skip
        wire = payloads.build(
            key, kind="reading", msg_id=payloads.reading_id("kit-1", f"c{i}"), kit_id="kit-1",
            kode_wilayah=KW, tps=TPS, seq=i + 1, created_at=2.0, body=body, epoch=1,
        )  # fmt: skip
        out.append(precheck(topics.DEFAULT_PREFIX, topic, wire, registry))
    return out


def _run(target, checked: list, batch: int) -> dict:
    store = CollectorStore(target)
    try:
        rates = {}
        for label, expect in (("stored_per_s", "stored"), ("duplicates_per_s", "duplicate")):
            t = time.perf_counter()
            for i in range(0, len(checked), batch):
                store.begin()
                for c in checked[i : i + batch]:
                    if store.store(c).status != expect:
                        raise SystemExit(f"unexpected outcome (wanted {expect})")
                store.commit()
            rates[label] = round(len(checked) / (time.perf_counter() - t))
        return rates
    finally:
        store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=5000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    checked = _messages(args.readings)
    out: dict = {"readings": args.readings, "batch": args.batch}
    with tempfile.TemporaryDirectory() as d:
        out["sqlite"] = _run(Path(d) / "collector.db", checked, args.batch)
    try:
        from tests.pg import PostgresCluster, PostgresUnavailable

        cluster = PostgresCluster(settings={"fsync": "on", "full_page_writes": "on"}).start()
    except (ImportError, PostgresUnavailable) as exc:
        out["postgresql"] = {"skipped": str(exc)}
    else:
        try:
            out["postgresql"] = _run(cluster.create_database(), checked, args.batch)
        finally:
            cluster.close()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:12s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
