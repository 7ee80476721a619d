"""Configuration changes go into the audit trail: at start-up, the settings in force are
compared with those the last ``config`` event recorded, and a new event names what changed."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .clock import Clock, utc_seconds
from .store import AuditEvent, AuditQuery, Store

ACTION = "config"
ACTOR = "signet:ca"


def record_config_change(store: Store, clock: Clock, settings: Mapping[str, str]) -> list[str]:
    """Append a ``config`` event if `settings` differ from the last one recorded (or none
    was); return the names that changed (every name, the first time)."""
    last = store.audit_records(AuditQuery(action=ACTION, limit=1, newest_first=True))
    before: dict[str, str] = {}
    if last:
        try:
            before = dict(json.loads(last[0].detail).get("settings", {}))
        except (ValueError, TypeError, AttributeError):
            before = {}  # unreadable: treat everything as changed
    changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
    if changed:
        detail = json.dumps({"changed": changed, "settings": dict(settings)}, sort_keys=True)
        store.append_audit(AuditEvent(utc_seconds(clock.now()), ACTION, ACTOR, None, detail))
    return changed
