"""ca_server.core.policy: each named check alone, admin against workload, and rule lookup."""

from __future__ import annotations

import ipaddress

import pytest

from ca_server.core.errors import PolicyViolation
from ca_server.core.policy import (
    ANY_IP,
    SIGN_CHECKS,
    Caller,
    Policy,
    RequestedNames,
    WorkloadRule,
    check_is_admin,
    check_may_revoke,
    check_request,
    dns_names_allowed,
    identity_in_trust_domain,
    identity_is_callers_own,
    ip_addresses_allowed,
    no_reserved_names,
)

TD = "signet.local"
WEB = f"spiffe://{TD}/web/frontend"
API = f"spiffe://{TD}/api/server"
ADMIN = f"spiffe://{TD}/admin"

WEB_RULE = WorkloadRule(
    identity=f"spiffe://{TD}/web/*",
    dns_names=("*.web.internal", "web.internal"),
    ip_ranges=(ipaddress.ip_network("10.0.0.0/8"),),
)
FRONTEND_RULE = WorkloadRule(
    identity=WEB,
    dns_names=("frontend.example.com",),
    ip_ranges=(ipaddress.ip_network("192.0.2.0/24"),),
)
API_RULE = WorkloadRule(identity=f"spiffe://{TD}/api/**", dns_names=("api.internal",))

POLICY = Policy(
    trust_domain=TD,
    admins=(ADMIN, f"spiffe://{TD}/admin/*"),
    workloads=(WEB_RULE, FRONTEND_RULE, API_RULE),
)

WORKLOAD = Caller(identity=WEB, serial="0a")
ADMIN_CALLER = Caller(identity=ADMIN, serial="0b", is_admin=True)


def ips(*values: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return tuple(ipaddress.ip_address(v) for v in values)


# -- Policy.is_admin / rules_for ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "admin"),
    [
        (ADMIN, True),
        (f"spiffe://{TD}/admin/alice", True),
        (f"spiffe://{TD}/admin/alice/laptop", False),
        (f"spiffe://{TD}/administrator", False),
        (WEB, False),
        ("spiffe://other.local/admin", False),
    ],
)
def test_is_admin_only_for_identities_matching_an_admin_pattern(identity: str, admin: bool) -> None:
    assert POLICY.is_admin(identity) is admin


def test_rules_for_returns_every_matching_rule_in_config_order() -> None:
    assert POLICY.rules_for(WEB) == [WEB_RULE, FRONTEND_RULE]


def test_rules_for_returns_only_rules_whose_pattern_matches() -> None:
    assert POLICY.rules_for(f"spiffe://{TD}/web/backend") == [WEB_RULE]
    assert POLICY.rules_for(f"spiffe://{TD}/api/v1/server") == [API_RULE]
    assert POLICY.rules_for(f"spiffe://{TD}/db/main") == []
    assert POLICY.rules_for("spiffe://other.local/web/frontend") == []


def test_policy_defaults_let_admins_hold_any_dns_name_and_ip() -> None:
    policy = Policy(trust_domain=TD, admins=(ADMIN,))
    assert policy.admin_dns_names == ("*",)
    assert policy.admin_ip_ranges == ANY_IP
    assert policy.workloads == ()


# -- identity_in_trust_domain -------------------------------------------------------------------


def test_identity_in_trust_domain_accepts_an_identity_of_the_trust_domain() -> None:
    identity_in_trust_domain(POLICY, ADMIN_CALLER, RequestedNames(API))


def test_identity_in_trust_domain_refuses_another_trust_domain_even_for_admin() -> None:
    with pytest.raises(PolicyViolation) as info:
        identity_in_trust_domain(
            POLICY, ADMIN_CALLER, RequestedNames("spiffe://other.local/web/frontend")
        )
    assert str(info.value) == (
        "identity spiffe://other.local/web/frontend is outside the trust domain 'signet.local'"
    )


def test_identity_in_trust_domain_refuses_a_trust_domain_that_only_shares_a_prefix() -> None:
    with pytest.raises(PolicyViolation, match="outside the trust domain"):
        identity_in_trust_domain(
            POLICY, ADMIN_CALLER, RequestedNames("spiffe://signet.local.evil/web")
        )


# -- identity_is_callers_own --------------------------------------------------------------------


def test_workload_may_request_its_own_identity() -> None:
    identity_is_callers_own(POLICY, WORKLOAD, RequestedNames(WEB))


def test_workload_may_not_request_another_identity() -> None:
    with pytest.raises(PolicyViolation) as info:
        identity_is_callers_own(POLICY, WORKLOAD, RequestedNames(API))
    assert str(info.value) == (
        f"{WEB} may request certificates only for its own identity, not {API}"
    )


def test_workload_may_not_request_a_sibling_its_rule_pattern_also_matches() -> None:
    with pytest.raises(PolicyViolation, match="only for its own identity"):
        identity_is_callers_own(POLICY, WORKLOAD, RequestedNames(f"spiffe://{TD}/web/backend"))


def test_admin_may_request_any_identity() -> None:
    identity_is_callers_own(POLICY, ADMIN_CALLER, RequestedNames(API))


# -- dns_names_allowed --------------------------------------------------------------------------


def test_workload_may_hold_dns_names_its_rules_list() -> None:
    req = RequestedNames(WEB, dns_names=("web.internal", "a.web.internal", "frontend.example.com"))
    dns_names_allowed(POLICY, WORKLOAD, req)


def test_workload_dns_names_outside_its_rules_are_refused_and_named() -> None:
    req = RequestedNames(
        WEB, dns_names=("a.web.internal", "api.internal", "a.b.web.internal", "evil.com")
    )
    with pytest.raises(PolicyViolation) as info:
        dns_names_allowed(POLICY, WORKLOAD, req)
    assert str(info.value).startswith(
        f"DNS name(s) api.internal, a.b.web.internal, evil.com not allowed for {WEB}"
    )
    assert "[[policy.workloads]]" in str(info.value)


def test_workload_without_a_rule_may_hold_no_dns_name() -> None:
    caller = Caller(identity=f"spiffe://{TD}/db/main", serial="01")
    with pytest.raises(PolicyViolation, match=r"db\.internal not allowed"):
        dns_names_allowed(POLICY, caller, RequestedNames(caller.identity, ("db.internal",)))


def test_workload_without_a_rule_may_still_request_no_dns_name() -> None:
    caller = Caller(identity=f"spiffe://{TD}/db/main", serial="01")
    dns_names_allowed(POLICY, caller, RequestedNames(caller.identity))


def test_admin_may_hold_any_dns_name_by_default() -> None:
    req = RequestedNames(API, dns_names=("anything.example.org", "x.y.z"))
    dns_names_allowed(POLICY, ADMIN_CALLER, req)


def test_admin_dns_names_are_limited_by_admin_dns_names() -> None:
    policy = Policy(trust_domain=TD, admins=(ADMIN,), admin_dns_names=("*.corp.internal",))
    dns_names_allowed(policy, ADMIN_CALLER, RequestedNames(API, ("a.corp.internal",)))
    with pytest.raises(PolicyViolation, match=r"^DNS name\(s\) corp.internal not allowed"):
        dns_names_allowed(policy, ADMIN_CALLER, RequestedNames(API, ("corp.internal",)))


def test_admin_dns_names_ignore_workload_rules() -> None:
    policy = Policy(trust_domain=TD, admins=(ADMIN,), admin_dns_names=(), workloads=(WEB_RULE,))
    with pytest.raises(PolicyViolation, match=r"web\.internal not allowed"):
        dns_names_allowed(policy, ADMIN_CALLER, RequestedNames(WEB, ("web.internal",)))


# -- ip_addresses_allowed -----------------------------------------------------------------------


def test_workload_may_hold_ips_in_any_of_its_rules_ranges() -> None:
    req = RequestedNames(WEB, ip_addresses=ips("10.1.2.3", "192.0.2.7"))
    ip_addresses_allowed(POLICY, WORKLOAD, req)


def test_workload_ips_outside_its_ranges_are_refused_and_named() -> None:
    req = RequestedNames(WEB, ip_addresses=ips("10.0.0.1", "172.16.0.1", "2001:db8::1"))
    with pytest.raises(PolicyViolation) as info:
        ip_addresses_allowed(POLICY, WORKLOAD, req)
    assert str(info.value).startswith(
        f"IP address(es) 172.16.0.1, 2001:db8::1 not allowed for {WEB}"
    )


def test_workload_whose_rules_list_no_ranges_may_hold_no_ip() -> None:
    caller = Caller(identity=f"spiffe://{TD}/api/server", serial="02")
    with pytest.raises(PolicyViolation, match=r"10\.0\.0\.1 not allowed"):
        ip_addresses_allowed(POLICY, caller, RequestedNames(caller.identity, (), ips("10.0.0.1")))


def test_admin_may_hold_any_ip_by_default() -> None:
    req = RequestedNames(API, ip_addresses=ips("203.0.113.5", "2001:db8::5"))
    ip_addresses_allowed(POLICY, ADMIN_CALLER, req)


def test_admin_ips_are_limited_by_admin_ip_ranges() -> None:
    policy = Policy(
        trust_domain=TD, admins=(ADMIN,), admin_ip_ranges=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    ip_addresses_allowed(policy, ADMIN_CALLER, RequestedNames(API, (), ips("10.9.9.9")))
    with pytest.raises(PolicyViolation, match=r"^IP address\(es\) ::1 not allowed"):
        ip_addresses_allowed(policy, ADMIN_CALLER, RequestedNames(API, (), ips("::1")))


# -- check_request: the checks in order ---------------------------------------------------------


def test_sign_checks_run_in_the_documented_order() -> None:
    assert list(SIGN_CHECKS) == [
        no_reserved_names,
        identity_in_trust_domain,
        identity_is_callers_own,
        dns_names_allowed,
        ip_addresses_allowed,
    ]


@pytest.mark.parametrize(
    ("identity", "dns"),
    [
        (f"spiffe://{TD}/signet/server", ()),
        (WEB, ("ca.signet.invalid",)),
        (WEB, ("signet.invalid",)),
    ],
)
def test_the_cas_own_names_are_refused_even_to_admins(identity: str, dns: tuple[str, ...]) -> None:
    with pytest.raises(PolicyViolation, match="reserved"):
        no_reserved_names(POLICY, ADMIN_CALLER, RequestedNames(identity, dns))


def test_check_request_passes_a_workload_asking_for_what_policy_allows() -> None:
    req = RequestedNames(WEB, ("a.web.internal",), ips("10.0.0.9"))
    check_request(POLICY, WORKLOAD, req)


def test_check_request_reports_the_identity_before_the_names() -> None:
    req = RequestedNames(API, ("evil.com",), ips("8.8.8.8"))
    with pytest.raises(PolicyViolation, match="only for its own identity"):
        check_request(POLICY, WORKLOAD, req)


def test_check_request_refuses_a_workload_ip_after_its_names_pass() -> None:
    req = RequestedNames(WEB, ("a.web.internal",), ips("8.8.8.8"))
    with pytest.raises(PolicyViolation, match=r"8\.8\.8\.8 not allowed"):
        check_request(POLICY, WORKLOAD, req)


# -- check_may_revoke / check_is_admin ----------------------------------------------------------


def test_workload_may_revoke_its_own_certificate() -> None:
    check_may_revoke(WORKLOAD, WEB)


def test_workload_may_not_revoke_another_identitys_certificate() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_may_revoke(WORKLOAD, API)
    assert str(info.value) == f"{WEB} may revoke only its own certificates, not one issued to {API}"


def test_admin_may_revoke_any_certificate() -> None:
    check_may_revoke(ADMIN_CALLER, API)
    check_may_revoke(ADMIN_CALLER, "spiffe://other.local/x")


def test_check_is_admin_passes_an_admin() -> None:
    check_is_admin(ADMIN_CALLER, "ListCertificates")


def test_check_is_admin_refuses_a_workload_naming_the_action() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_is_admin(WORKLOAD, "ListCertificates")
    assert str(info.value) == f"ListCertificates needs the admin role; {WEB} is not an admin"


def test_caller_is_admin_flag_not_identity_decides_the_role() -> None:
    # An admin-looking identity without the flag is a workload to the checks.
    pretender = Caller(identity=ADMIN, serial="03", is_admin=False)
    with pytest.raises(PolicyViolation, match="needs the admin role"):
        check_is_admin(pretender, "CreateBootstrapToken")
