"""Who may hold which names. Policy is data (from config.toml); the checks are small named
functions, each raising one precise error, applied in order by ``check_request``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import ErrorReason, PolicyViolation
from .names import (
    IPAddress,
    IPNetwork,
    dns_pattern_matches,
    ip_allowed,
    parse_spiffe_id,
    spiffe_pattern_matches,
)

# The CA's own name, on its serving certificate only: clients dial the CA with this as the TLS
# name (grpc.ssl_target_name_override), so no other certificate this CA issued can pose as it.
# .invalid is reserved by RFC 6761: it never resolves and no public CA will issue for it.
CA_SERVER_NAME = "ca.signet.invalid"
RESERVED_DNS_SUFFIX = "signet.invalid"
RESERVED_PATH_PREFIX = "/signet/"  # spiffe://<td>/signet/...: the CA's own identities

ANY_IP: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


@dataclass(frozen=True, slots=True)
class WorkloadRule:
    """Identities matching ``identity`` may also carry these DNS names and IPs."""

    identity: str
    dns_names: tuple[str, ...] = ()
    ip_ranges: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    trust_domain: str
    admins: tuple[str, ...]
    admin_dns_names: tuple[str, ...] = ("*",)
    admin_ip_ranges: tuple[IPNetwork, ...] = ANY_IP
    workloads: tuple[WorkloadRule, ...] = ()

    def is_admin(self, identity: str) -> bool:
        return any(spiffe_pattern_matches(p, identity) for p in self.admins)

    def rules_for(self, identity: str) -> list[WorkloadRule]:
        return [r for r in self.workloads if spiffe_pattern_matches(r.identity, identity)]


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated peer: who it is and the certificate it proved possession of."""

    identity: str
    serial: str
    is_admin: bool = False
    peer: str = ""  # its network address (gRPC's peer form), for the audit trail


@dataclass(frozen=True, slots=True)
class RequestedNames:
    identity: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = field(default=())


Check = Callable[[Policy, Caller, RequestedNames], None]


def identity_in_trust_domain(policy: Policy, caller: Caller, req: RequestedNames) -> None:
    if parse_spiffe_id(req.identity).trust_domain != policy.trust_domain:
        raise PolicyViolation(
            f"identity {req.identity} is outside the trust domain {policy.trust_domain!r}",
            reason=ErrorReason.IDENTITY_OUTSIDE_TRUST_DOMAIN,
            metadata={"identity": req.identity, "trust_domain": policy.trust_domain},
        )


def identity_is_callers_own(policy: Policy, caller: Caller, req: RequestedNames) -> None:
    if not caller.is_admin and req.identity != caller.identity:
        raise PolicyViolation(
            f"{caller.identity} may request certificates only for its own identity, "
            f"not {req.identity}",
            reason=ErrorReason.IDENTITY_NOT_OWN,
            metadata={"identity": req.identity},
        )


def _dns_allowed_by(patterns: Sequence[str], name: str) -> bool:
    return any(dns_pattern_matches(p, name) for p in patterns)


def dns_names_allowed(policy: Policy, caller: Caller, req: RequestedNames) -> None:
    if caller.is_admin:
        patterns: list[str] = list(policy.admin_dns_names)
    else:
        patterns = [p for r in policy.rules_for(req.identity) for p in r.dns_names]
    denied = [n for n in req.dns_names if not _dns_allowed_by(patterns, n)]
    if denied:
        raise PolicyViolation(
            f"DNS name(s) {', '.join(denied)} not allowed for {req.identity} by policy "
            "(see [[policy.workloads]] in config.toml)",
            reason=ErrorReason.NAME_NOT_ALLOWED,
            metadata={"names": ",".join(denied), "identity": req.identity},
        )


def ip_addresses_allowed(policy: Policy, caller: Caller, req: RequestedNames) -> None:
    if caller.is_admin:
        networks: tuple[IPNetwork, ...] = policy.admin_ip_ranges
    else:
        networks = tuple(n for r in policy.rules_for(req.identity) for n in r.ip_ranges)
    denied = [str(ip) for ip in req.ip_addresses if not ip_allowed(networks, ip)]
    if denied:
        raise PolicyViolation(
            f"IP address(es) {', '.join(denied)} not allowed for {req.identity} by policy "
            "(see [[policy.workloads]] in config.toml)",
            reason=ErrorReason.NAME_NOT_ALLOWED,
            metadata={"names": ",".join(denied), "identity": req.identity},
        )


def no_reserved_names(policy: Policy, caller: Caller, req: RequestedNames) -> None:
    """Nobody, admins included, gets the CA's own names through the API."""
    if parse_spiffe_id(req.identity).path.startswith(RESERVED_PATH_PREFIX):
        raise PolicyViolation(
            f"{req.identity} is reserved for the CA's own certificates (spiffe://<td>/signet/...)",
            reason=ErrorReason.NAME_RESERVED,
            metadata={"names": req.identity},
        )
    reserved = [
        n
        for n in req.dns_names
        if n == RESERVED_DNS_SUFFIX or n.endswith("." + RESERVED_DNS_SUFFIX)
    ]
    if reserved:
        raise PolicyViolation(
            f"DNS name(s) {', '.join(reserved)} are reserved for the CA itself",
            reason=ErrorReason.NAME_RESERVED,
            metadata={"names": ",".join(reserved)},
        )


SIGN_CHECKS: tuple[Check, ...] = (
    no_reserved_names,
    identity_in_trust_domain,
    identity_is_callers_own,
    dns_names_allowed,
    ip_addresses_allowed,
)


def check_request(policy: Policy, caller: Caller, req: RequestedNames) -> None:
    """Raise PolicyViolation unless ``caller`` may obtain a certificate carrying ``req``."""
    for check in SIGN_CHECKS:
        check(policy, caller, req)


def check_may_revoke(caller: Caller, certificate_identity: str) -> None:
    if not caller.is_admin and caller.identity != certificate_identity:
        raise PolicyViolation(
            f"{caller.identity} may revoke only its own certificates, "
            f"not one issued to {certificate_identity}",
            reason=ErrorReason.CERTIFICATE_NOT_OWN,
            metadata={"identity": certificate_identity},
        )


def check_is_admin(caller: Caller, what: str) -> None:
    if not caller.is_admin:
        raise PolicyViolation(
            f"{what} needs the admin role; {caller.identity} is not an admin",
            reason=ErrorReason.ADMIN_REQUIRED,
        )


def grantor(policy: Policy, authorized_by: str) -> Caller:
    """The authority behind a certificate's names, as a Caller for the policy checks. The
    CA's own grants (init's admin credentials, the serving certificate) count as admin."""
    if not authorized_by.startswith("spiffe://"):
        return Caller(authorized_by, "", is_admin=True)
    return Caller(authorized_by, "", is_admin=policy.is_admin(authorized_by))
