"""``ca-server status``: the CA's state for a person, or as JSON for scripts. Reads the data
directory and the store; needs no running server and no key."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .config import load_config, url_has_password
from .core.root_documents import LEGACY_ROOT_CRL, ROOT_CRL
from .datadir import DataDir
from .store import open_store


def _cert(path: Path) -> dict[str, Any]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def _running(d: DataDir) -> dict[str, Any] | None:
    """The listeners serve.json names, if the server that wrote it is alive."""
    try:
        ready = json.loads(d.serve_json.read_text())
        os.kill(int(ready["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return {k: v for k, v in ready.items() if k.endswith("listen") or k in ("pid", "workers")}


def collect(data_dir: Path) -> dict[str, Any]:
    d = DataDir(data_dir)
    config = load_config(data_dir)
    url = config.store_url
    report: dict[str, Any] = {
        "data_dir": str(d.path),
        "trust_domain": config.trust_domain,
        "root": _cert(d.root_cert),
        "intermediate": _cert(d.intermediate_cert),
        "root_key_online": d.root_key.exists(),
        "store": "postgresql://<with a password>" if url_has_password(url) else url,
        "server": _running(d),
    }
    now = dt.datetime.now(dt.UTC)
    store = open_store(url)
    try:
        live, soon = store.count_live(now, 24 * 3600)
        report["certificates"] = {
            "live": live,
            "expiring_within_24h": soon,
            "revoked_unexpired": len(store.revoked_unexpired(now)),
        }
        crl = store.latest_crl()
        report["crl"] = (
            None
            if crl is None
            else {
                "number": crl.number,
                "this_update": crl.this_update.isoformat(),
                "next_update": crl.next_update.isoformat(),
                "bytes": len(crl.der),
            }
        )
        records = store.ca_certificates()
        report["ca_certificates"] = [
            {
                "kind": r.kind,
                "state": r.state,
                "key_id": r.key_id,
                "serial": r.serial,
                "subject": x509.load_der_x509_certificate(r.der).subject.rfc4514_string(),
                "not_after": r.not_after.isoformat(),
                **({"overlap_until": r.overlap_until.isoformat()} if r.overlap_until else {}),
            }
            for r in records
            if r.state != "retired"
        ]
        active_root = next((r for r in records if r.kind == "root" and r.state == "active"), None)
        root_docs = {doc.name: doc for doc in store.signed_documents()}
        root_crl = root_docs.get(ROOT_CRL + active_root.key_id if active_root else LEGACY_ROOT_CRL)
        report["root_crl_next_update"] = root_crl.next_update.isoformat() if root_crl else None
        head = store.audit_head()
        report["audit"] = {
            "chain_head": {"position": head[0], "hash": head[1]} if head else None,
            "unsealed": bool(store.unsealed_audit(1)),
        }
    finally:
        store.close()
    return report


def render(report: dict[str, Any]) -> str:
    """The report as lines for a person."""
    lines = [f"Signet CA in {report['data_dir']} (trust domain {report['trust_domain']})"]
    for role in ("root", "intermediate"):
        c = report[role]
        lines.append(f"  {role:<13} {c['subject']}, expires {c['not_after']}")
        lines.append(f"  {'':<13} sha256 {c['fingerprint_sha256']}")
    for c in report.get("ca_certificates", []):
        extra = f", published until at least {c['overlap_until']}" if "overlap_until" in c else ""
        lines.append(
            f"  {c['kind']:<13} {c['state']}: {c['subject']} (key {c['key_id'][:16]}), "
            f"expires {c['not_after']}{extra}"
        )
    lines.append(
        "  root key      "
        + ("in the data directory" if report["root_key_online"] else "offline")
        + f"; root CRL valid until {report['root_crl_next_update'] or 'never signed'}"
    )
    lines.append(f"  store         {report['store']}")
    server = report["server"]
    if server is None:
        lines.append("  server        not running")
    else:
        listeners = ", ".join(f"{k} {v}" for k, v in server.items() if k.endswith("listen"))
        lines.append(f"  server        running (pid {server['pid']}): {listeners}")
    certs = report["certificates"]
    lines.append(
        f"  certificates  {certs['live']} live, {certs['expiring_within_24h']} expiring within "
        f"24h, {certs['revoked_unexpired']} revoked and not yet expired"
    )
    crl = report["crl"]
    lines.append(
        "  CRL           none built yet"
        if crl is None
        else f"  CRL           #{crl['number']}, {crl['bytes']} bytes, this update "
        f"{crl['this_update']}, next update {crl['next_update']}"
    )
    audit = report["audit"]
    head = audit["chain_head"]
    lines.append(
        "  audit chain   "
        + (f"head {head['position']} {head['hash']}" if head else "nothing sealed yet")
        + ("; newer events not sealed yet" if audit["unsealed"] else "")
    )
    return "\n".join(lines)
