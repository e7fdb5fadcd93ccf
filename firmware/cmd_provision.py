"""`tpskit provision`: set the kit's identity, broker, DPT and key (H-1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="one provisioning file per kit (TOML or JSON, keys as the options below); "
                        "options override it")
    p.add_argument("--kode-wilayah", help="kode wilayah provinsi.kabkota.kecamatan.desa, e.g. 31.71.01.1001")
    p.add_argument("--tps", help="TPS number 1-999")
    p.add_argument("--broker", help="broker URL mqtts://host:port")
    p.add_argument("--username", help="MQTT username of this kit")
    p.add_argument("--password-file", help="file with the MQTT password (copied to the credential file)")
    p.add_argument("--ca-file", help="CA bundle (PEM) that signed the broker's certificate; copied "
                                     "beside the config as ca.pem")
    p.add_argument("--collector-key", dest="collector_key_file", metavar="FILE",
                   help="the collectors' ack public key (ack.key.pub of tpskit-collector); copied beside "
                        "the config as collector.pub: the kit then takes only acks they signed, also from a "
                        "USB stick")
    p.add_argument("--dpt", help="registered voters of this TPS (Pemilu 2024: at most 300)")
    p.add_argument("--kit-id", help="kit name (default kit-<kode wilayah digits>-<TPS>)")
    p.add_argument("--state-dir", help="state directory (default from the config, /var/lib/tpskit)")
    p.add_argument("--config-out", help="config file to write (default --config or /etc/tpskit/config.toml)")
    p.add_argument("--secret-out", help="MQTT password file to write (default <config dir>/mqtt-password)")
    p.add_argument("--export", metavar="DIR",
                   help="also write <kit_id>.csv (registry row) into DIR, e.g. a USB stick")
    p.add_argument("--registry", metavar="FILE", help="also add the kit to this collector registry (JSON)")
    p.add_argument("--force", action="store_true",
                   help="allow a new identity although the kit holds data (moved to archive/, never deleted)")
    p.add_argument("--new-key", action="store_true",
                   help="with --force: replace the key (the old one is kept as a backup)")
    p.add_argument("--volatile-ok", action="store_true",
                   help="allow a state dir under /tmp or /run (tests and demos only: lost at reboot)")
    p.add_argument("--service-user", default="tpskit", help="owner of the key when run as root")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    batch = p.add_argument_group("a regency prepares many kits at once (no kit needed)")
    batch.add_argument("--prepare", metavar="CSV",
                       help="CSV kode_wilayah,tps[,dpt][,kit_id]: write one --from file per kit, broker "
                            "passwords and ACL into --out-dir (with --broker, optional --ca-file and "
                            "--collector-key)")
    batch.add_argument("--out-dir", help="output directory for --prepare")


def run(args: argparse.Namespace) -> int:
    from comms.signing import KeyFileError, read_registry_for_update
    from firmware import config as cfg
    from firmware.provision import (
        ProvisionError,
        ProvisionRequest,
        export_public,
        provision,
        read_request_file,
    )

    if args.prepare:
        return _prepare(args)
    try:
        values = read_request_file(args.from_file) if args.from_file else {}
        for name in ("kode_wilayah", "tps", "broker", "username", "password_file", "ca_file",
                     "collector_key_file", "dpt", "kit_id", "state_dir"):
            v = getattr(args, name)
            if v is not None:
                values[name] = v
        missing = [n for n in ("kode_wilayah", "tps", "broker") if values.get(n) in (None, "")]
        if missing:
            flags = ", ".join("--" + n.replace("_", "-") for n in missing)
            raise ProvisionError(f"belum diisi / missing: {flags} (atau di file --from)")
        req = ProvisionRequest(**values)
        # the stick's folders and the registry first: a typo there must not leave a half-done provisioning
        if args.export and Path(args.export).exists() and not Path(args.export).is_dir():
            raise ProvisionError(f"--export {args.export} bukan folder / is not a folder: beri folder di USB "
                                 "stick, mis. /media/usb/registry / give a folder on the USB stick")
        if args.registry:
            read_registry_for_update(args.registry)
        config_out = Path(args.config_out or args.config or cfg.DEFAULT_PATH)
        result = provision(req, config_out=config_out, force=args.force, new_key=args.new_key,
                           service_user=args.service_user, secret_path=args.secret_out,
                           volatile_ok=args.volatile_ok)
        exported = export_public(result, args.export) if args.export else None
        if args.registry:
            from comms.signing import registry_add

            registry_add(args.registry, result.kit_id, result.public_key, kode_wilayah=result.kode_wilayah,
                         tps=result.tps)
    except (ProvisionError, cfg.ConfigError, KeyFileError, OSError) as exc:
        print(f"tpskit provision: GAGAL / FAILED: {exc}", file=sys.stderr)
        return 2

    if args.json:
        out = result.to_dict()
        out["exported"] = str(exported) if exported else None
        print(json.dumps(out, indent=2))
        return 0
    print(f"Kit {result.kit_id}: {result.kode_wilayah} TPS {result.tps}")
    print(f"  config     : {result.config_path} ({'ditulis' if result.config_changed else 'tidak berubah'})")
    key_state = "baru dibuat" if result.key_created else "sudah ada, dipakai"
    print(f"  kunci/key  : {result.key_path} ({key_state})")
    for note in result.notes:
        print(f"  catatan    : {note}")
    print(f"  kunci publik / public key: {result.public_key}")
    print(f"  (juga di {result.public_key_path} dan .pem)")
    print("  baris registry collector / registry row (kit_id,public_key,kode_wilayah,tps):")
    print(f"  {result.registry_csv}")
    if exported:
        print(f"  diekspor ke / exported to: {exported}")
    if args.registry:
        print(f"  ditambahkan ke registry / added to: {args.registry}")
    print("Langkah berikut / next: sudo tpskit calibrate, lalu sudo tpskit selftest")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from firmware.provision import ProvisionError, prepare_batch

    if not args.broker or not args.out_dir:
        print("tpskit provision --prepare: perlu --broker dan --out-dir / needs --broker and --out-dir",
              file=sys.stderr)
        return 2
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        print(f"tpskit provision: GAGAL / FAILED: --out-dir {args.out_dir} bukan folder / is not a folder: "
              "beri folder baru atau folder hasil --prepare sebelumnya / give a new folder or the one an "
              "earlier --prepare wrote", file=sys.stderr)
        return 2
    try:
        kits = prepare_batch(args.prepare, broker=args.broker, out_dir=args.out_dir, ca_file=args.ca_file,
                             collector_key_file=args.collector_key_file)
    except (ProvisionError, OSError) as exc:
        print(f"tpskit provision: GAGAL / FAILED: {exc}", file=sys.stderr)
        return 2
    new = sum(k.created for k in kits)
    if args.json:
        print(json.dumps([{"kit_id": k.kit_id, "kode_wilayah": k.kode_wilayah, "tps": k.tps, "dpt": k.dpt,
                           "file": str(k.path), "created": k.created} for k in kits], indent=2))
        return 0
    print(f"{len(kits)} kit ({new} baru) di {args.out_dir}/kits/ — satu file per kit untuk "
          "'sudo tpskit provision --from FILE'")
    print(f"  broker: mosquitto_passwd -U {args.out_dir}/mosquitto-passwords.txt ; "
          f"acl_file {args.out_dir}/mosquitto-acl.conf")
    return 0
