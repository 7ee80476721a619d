"""ca_server.core.names: SPIFFE IDs, DNS names, the patterns policy uses, and IP ranges."""

from __future__ import annotations

import ipaddress

import pytest

from ca_server.core.names import (
    SpiffeId,
    dns_pattern_matches,
    ip_allowed,
    normalize_dns_name,
    parse_spiffe_id,
    spiffe_pattern_matches,
    validate_trust_domain,
)

# -- SPIFFE IDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "trust_domain", "path"),
    [
        ("spiffe://signet.local/web/frontend", "signet.local", "/web/frontend"),
        ("spiffe://signet.local/a", "signet.local", "/a"),
        (
            "spiffe://prod-1.example_org/ns/default/sa/api.v2",
            "prod-1.example_org",
            "/ns/default/sa/api.v2",
        ),
        ("spiffe://signet.local/Web/Front_End-2", "signet.local", "/Web/Front_End-2"),
        ("spiffe://signet.local", "signet.local", ""),
    ],
)
def test_valid_spiffe_id_parses_into_trust_domain_and_path(
    uri: str, trust_domain: str, path: str
) -> None:
    sid = parse_spiffe_id(uri)
    assert sid == SpiffeId(trust_domain, path)
    assert str(sid) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://signet.local/web",
        "SPIFFE://signet.local/web",
        "spiffe:/signet.local/web",
        "signet.local/web",
        "",
    ],
)
def test_spiffe_id_with_wrong_scheme_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="is not a SPIFFE ID"):
        parse_spiffe_id(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://Signet.Local/web",  # uppercase
        "spiffe:///web",  # empty
        "spiffe://sig net/web",  # space
        "spiffe://signet!local/web",
        "spiffe://./web",
        "spiffe://../web",
        "spiffe://" + "a" * 256 + "/web",  # longer than 255
    ],
)
def test_spiffe_id_with_bad_trust_domain_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="invalid trust domain"):
        parse_spiffe_id(uri)


@pytest.mark.parametrize(
    ("uri", "segment"),
    [
        ("spiffe://signet.local/", "''"),
        ("spiffe://signet.local/web/", "''"),
        ("spiffe://signet.local/web//frontend", "''"),
        ("spiffe://signet.local/./web", "'.'"),
        ("spiffe://signet.local/web/..", "'..'"),
        ("spiffe://signet.local/web/fr ont", "'fr ont'"),
        ("spiffe://signet.local/web/caf\u00e9", "'caf\u00e9'"),
    ],
)
def test_spiffe_id_with_empty_dot_or_bad_path_segment_is_refused(uri: str, segment: str) -> None:
    with pytest.raises(ValueError, match="invalid path segment") as info:
        parse_spiffe_id(uri)
    assert segment in str(info.value)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://signet.local/web?x=1",
        "spiffe://signet.local/web#frag",
        "spiffe://signet.local/we%20b",
        "spiffe://signet.local/web:8080",
    ],
)
def test_spiffe_id_with_query_fragment_or_percent_encoding_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="must not carry a port, user info, query or fragment"):
        parse_spiffe_id(uri)


@pytest.mark.parametrize(
    ("uri", "bad_part"),
    [
        ("spiffe://signet.local:8443/web", "signet.local:8443"),
        ("spiffe://user@signet.local/web", "user@signet.local"),
    ],
)
def test_spiffe_id_with_port_or_user_info_is_refused(uri: str, bad_part: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_spiffe_id(uri)
    assert bad_part in str(info.value)


def test_validate_trust_domain_returns_valid_domain_unchanged() -> None:
    assert validate_trust_domain("prod.example-1_x") == "prod.example-1_x"


# -- DNS names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("Web.Internal", "web.internal"),
        ("API.EXAMPLE.COM", "api.example.com"),
        ("web.internal.", "web.internal"),
        ("localhost", "localhost"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("*.web.internal", "*.web.internal"),
        ("*.Web.Internal.", "*.web.internal"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_dns_name_is_lowercased_and_loses_trailing_dot(name: str, normalized: str) -> None:
    assert normalize_dns_name(name) == normalized


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("-web.internal", "'-web'"),
        ("web-.internal", "'web-'"),
        ("we_b.internal", "'we_b'"),
        ("web..internal", "''"),
        (".web.internal", "''"),
        ("web internal", "'web internal'"),
        ("b\u00fccher.example", "'b\u00fccher'"),
        ("a" * 64 + ".example", "'" + "a" * 64 + "'"),
    ],
)
def test_dns_name_with_bad_label_is_refused_naming_the_label(name: str, label: str) -> None:
    with pytest.raises(ValueError, match="is not a valid host label") as info:
        normalize_dns_name(name)
    assert f"label {label}" in str(info.value)


@pytest.mark.parametrize("name", ["", ".", "  ", ".".join(["a" * 50] * 5)])
def test_empty_or_overlong_dns_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid DNS name"):
        normalize_dns_name(name)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("web.*.internal", "'*'"),  # not leftmost
        ("*.*.internal", "'*'"),  # two wildcards
        ("*.internal", "'*'"),  # on a two-label name
        ("*", "'*'"),  # alone
        ("w*.web.internal", "'w*'"),  # partial-label wildcard
        ("**.web.internal", "'**'"),  # pattern syntax, not a name
    ],
)
def test_wildcard_is_allowed_only_as_whole_leftmost_label_of_three_or_more(
    name: str, label: str
) -> None:
    with pytest.raises(ValueError, match="is not a valid host label") as info:
        normalize_dns_name(name)
    assert f"label {label}" in str(info.value)


def test_dns_name_with_two_trailing_dots_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid DNS name"):
        normalize_dns_name("web.internal..")


# -- DNS patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web.internal", "a.b.c.d", "localhost", "*.web.internal"])
def test_dns_pattern_star_alone_allows_any_name(name: str) -> None:
    assert dns_pattern_matches("*", name)


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("a.web.internal", True),
        ("api-2.web.internal", True),
        ("web.internal", False),  # zero labels
        ("a.b.web.internal", False),  # two labels
        ("a.web.internal.evil", False),
        ("a.xweb.internal", False),
        ("a.other.internal", False),
    ],
)
def test_dns_pattern_single_star_label_matches_exactly_one_label(name: str, matches: bool) -> None:
    assert dns_pattern_matches("*.web.internal", name) is matches


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("a.web.internal", True),
        ("a.b.web.internal", True),
        ("a.b.c.d.web.internal", True),
        ("web.internal", False),  # needs at least one label
        ("a.web.internal.evil", False),
        ("a.b.other.internal", False),
    ],
)
def test_dns_pattern_double_star_matches_one_or_more_labels(name: str, matches: bool) -> None:
    assert dns_pattern_matches("**.web.internal", name) is matches


def test_dns_pattern_without_wildcard_matches_only_that_name() -> None:
    assert dns_pattern_matches("web.internal", "web.internal")
    assert not dns_pattern_matches("web.internal", "a.web.internal")
    assert not dns_pattern_matches("web.internal", "internal")


def test_dns_pattern_is_case_insensitive_and_ignores_its_trailing_dot() -> None:
    assert dns_pattern_matches("*.Web.Internal.", "a.web.internal")


def test_dns_pattern_star_label_matches_a_wildcard_name_in_that_position() -> None:
    # '*.web.internal' as a requested name is one label under web.internal
    assert dns_pattern_matches("*.web.internal", "*.web.internal")
    assert not dns_pattern_matches("a.web.internal", "*.web.internal")


# -- SPIFFE patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "matches"),
    [
        ("spiffe://signet.local/web/frontend", True),
        ("spiffe://signet.local/web/backend", True),
        ("spiffe://signet.local/web", False),  # zero segments
        ("spiffe://signet.local/web/a/b", False),  # two segments
        ("spiffe://signet.local/webx/a", False),
        ("spiffe://other.local/web/frontend", False),  # other trust domain
    ],
)
def test_spiffe_pattern_star_matches_exactly_one_segment(identity: str, matches: bool) -> None:
    assert spiffe_pattern_matches("spiffe://signet.local/web/*", identity) is matches


@pytest.mark.parametrize(
    ("identity", "matches"),
    [
        ("spiffe://signet.local/web/a", True),
        ("spiffe://signet.local/web/a/b/c", True),
        ("spiffe://signet.local/web", False),
        ("spiffe://signet.local/api/a", False),
        ("spiffe://other.local/web/a/b", False),  # other trust domain
    ],
)
def test_spiffe_pattern_double_star_matches_one_or_more_segments(
    identity: str, matches: bool
) -> None:
    assert spiffe_pattern_matches("spiffe://signet.local/web/**", identity) is matches


def test_spiffe_pattern_with_star_in_middle_matches_one_segment_there() -> None:
    pattern = "spiffe://signet.local/ns/*/sa/api"
    assert spiffe_pattern_matches(pattern, "spiffe://signet.local/ns/prod/sa/api")
    assert not spiffe_pattern_matches(pattern, "spiffe://signet.local/ns/a/b/sa/api")


def test_spiffe_pattern_without_wildcard_matches_only_that_identity() -> None:
    pattern = "spiffe://signet.local/admin"
    assert spiffe_pattern_matches(pattern, "spiffe://signet.local/admin")
    assert not spiffe_pattern_matches(pattern, "spiffe://signet.local/admin/x")
    assert not spiffe_pattern_matches(pattern, "spiffe://signet.local/administrator")
    assert not spiffe_pattern_matches(pattern, "spiffe://signet.local")


def test_spiffe_pattern_in_other_trust_domain_matches_nothing_here() -> None:
    assert not spiffe_pattern_matches("spiffe://other.local/**", "spiffe://signet.local/web/a")
    assert not spiffe_pattern_matches("spiffe://signet.local/**", "spiffe://signet.localx/web")


@pytest.mark.parametrize(
    "identity",
    ["spiffe://signet.local/web/../admin", "spiffe://signet.local/web/a?x", "not-a-uri", ""],
)
def test_spiffe_pattern_never_matches_an_invalid_identity(identity: str) -> None:
    assert not spiffe_pattern_matches("spiffe://signet.local/**", identity)


# -- IP ranges ----------------------------------------------------------------------------------

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.1", False),
        ("fd00::1", True),
        ("fe80::1", False),
        ("::ffff:10.0.0.1", False),  # an IPv6 address, not the IPv4 one
    ],
)
def test_ip_allowed_only_inside_a_listed_network_of_its_version(ip: str, allowed: bool) -> None:
    assert ip_allowed(NETS, ipaddress.ip_address(ip)) is allowed


def test_ip_allowed_with_no_networks_allows_nothing() -> None:
    assert not ip_allowed((), ipaddress.ip_address("127.0.0.1"))


def test_ip_allowed_any_ranges_allow_both_versions() -> None:
    any_ip = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    assert ip_allowed(any_ip, ipaddress.ip_address("203.0.113.9"))
    assert ip_allowed(any_ip, ipaddress.ip_address("2001:db8::1"))


def test_spiffe_id_with_a_port_names_the_port_rule() -> None:
    with pytest.raises(ValueError, match="port"):
        parse_spiffe_id("spiffe://signet.local:8443/web")


@pytest.mark.parametrize("name", ["1.2.3.4", "10.0.0.1.", "host.123"])
def test_dns_name_ending_in_a_numeric_label_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="IP SAN"):
        normalize_dns_name(name)
