"""Names a certificate can carry (SPIFFE IDs, DNS names, IP addresses) and the patterns
policy uses to allow them. Validation follows the SPIFFE ID spec and RFC 1123 host names."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def validate_trust_domain(td: str) -> str:
    if not _TRUST_DOMAIN.match(td) or td in {".", ".."}:
        raise ValueError(
            f"invalid trust domain {td!r}: use lowercase letters, digits, '.', '-' and '_'"
        )
    return td


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Parse spiffe://trust-domain/path; raise ValueError with the rule that was broken."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri!r} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")
    rest = uri[len(prefix) :]
    if any(c in rest for c in "?#%@:"):
        raise ValueError(f"SPIFFE ID {uri!r} must not carry a port, user info, query or fragment")
    td, slash, path = rest.partition("/")
    validate_trust_domain(td)
    if slash:
        segments = path.split("/")
        for seg in segments:
            if not seg or seg in {".", ".."} or not _PATH_SEGMENT.match(seg):
                raise ValueError(
                    f"SPIFFE ID {uri!r} has an invalid path segment {seg!r} "
                    "(letters, digits, '.', '-', '_'; no empty, '.' or '..' segments)"
                )
        return SpiffeId(td, "/" + path)
    return SpiffeId(td, "")


def normalize_dns_name(name: str) -> str:
    """Lowercase a DNS name and check it is a valid host name (an optional leading '*.' label)."""
    n = name.lower().removesuffix(".")  # one trailing dot (the root) is allowed, no more
    labels = n.split(".")
    if not n or len(n) > 253:
        raise ValueError(f"invalid DNS name {name!r}")
    if labels[-1].isdigit():
        raise ValueError(f"invalid DNS name {name!r}: an IP address belongs in an IP SAN")
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) > 2:
            continue
        if not _DNS_LABEL.match(label):
            raise ValueError(
                f"invalid DNS name {name!r}: label {label!r} is not a valid host label"
            )
    return n


def _glob_match(pattern: list[str], value: list[str]) -> bool:
    """Match label/segment lists: '*' matches exactly one item, '**' one or more."""
    if not pattern:
        return not value
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_match(rest, value[i:]) for i in range(1, len(value) + 1))
    if not value:
        return False
    return (head == "*" or head == value[0]) and _glob_match(rest, value[1:])


# Pure functions of two strings, asked on every RPC with the same few patterns and callers:
# remembered rather than re-parsed (bounded).
@functools.lru_cache(maxsize=65536)
def dns_pattern_matches(pattern: str, name: str) -> bool:
    """'*' alone allows any name; otherwise per label: '*' is one label, '**' one or more."""
    if pattern == "*":
        return True
    return _glob_match(pattern.lower().rstrip(".").split("."), name.split("."))


@functools.lru_cache(maxsize=65536)
def spiffe_pattern_matches(pattern: str, spiffe_id: str) -> bool:
    """Patterns are SPIFFE IDs whose path segments may be '*' (one) or '**' (one or more)."""
    pat_td, _, pat_path = pattern.removeprefix("spiffe://").partition("/")
    try:
        sid = parse_spiffe_id(spiffe_id)
    except ValueError:
        return False
    if pat_td != sid.trust_domain:
        return False
    pat = pat_path.split("/") if pat_path else []
    val = sid.path[1:].split("/") if sid.path else []
    return _glob_match(pat, val)


def ip_allowed(networks: tuple[IPNetwork, ...], ip: IPAddress) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)
