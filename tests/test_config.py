"""ca_server.config (config.toml < SIGNET_* environment < flags) and
ca_server.core.durations (the duration syntax config and flags use)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from pathlib import Path

import pytest

from ca_server.config import (
    DEFAULT_KEY_TYPE,
    DEFAULT_LISTEN,
    DEFAULT_TRUST_DOMAIN,
    ServerSettings,
    default_admin_patterns,
    load_config,
    render_default_config,
)
from ca_server.core.authority import IssuanceSettings
from ca_server.core.durations import format_duration, parse_duration
from ca_server.core.errors import ConfigurationError
from ca_server.core.policy import ANY_IP, Policy, WorkloadRule
from ca_server.core.profile import PublicUrls

H, M, S, D = (dt.timedelta(hours=1), dt.timedelta(minutes=1), dt.timedelta(seconds=1),
              dt.timedelta(days=1))  # fmt: skip


def write_config(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text(text)
    return data_dir


# -- defaults and the rendered default file -----------------------------------------------------


@pytest.mark.parametrize(
    ("trust_domain", "key_type"),
    [("signet.local", "ec-p256"), ("prod.example.org", "ed25519"), ("x", "rsa-3072")],
)
def test_rendered_default_config_loads_back_to_the_defaults(
    tmp_path: Path, trust_domain: str, key_type: str
) -> None:
    write_config(tmp_path, render_default_config(trust_domain, key_type))
    config = load_config(tmp_path, env={})
    assert config.data_dir == tmp_path
    assert config.trust_domain == trust_domain
    assert config.key_type == key_type
    assert config.server == ServerSettings()
    assert config.issuance == IssuanceSettings()
    assert config.policy == Policy(
        trust_domain=trust_domain,
        admins=(f"spiffe://{trust_domain}/admin", f"spiffe://{trust_domain}/admin/*"),
        admin_dns_names=("*",),
        admin_ip_ranges=ANY_IP,
        workloads=(),
    )
    assert config.store_url == f"sqlite:///{tmp_path / 'ca.db'}"


def test_missing_config_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, env={})
    assert (config.trust_domain, config.key_type) == (DEFAULT_TRUST_DOMAIN, DEFAULT_KEY_TYPE)
    assert config.server == ServerSettings()
    assert config.server.listen == DEFAULT_LISTEN == "127.0.0.1:50051"
    assert config.issuance == IssuanceSettings()
    assert config.policy.admins == tuple(default_admin_patterns(DEFAULT_TRUST_DOMAIN))


def test_rendered_default_config_documents_every_setting_it_accepts() -> None:
    text = render_default_config("signet.local", "ec-p256")
    for key in (
        "trust_domain", "key_type", "listen", "server_names", "log_level", "serving_validity",
        "shutdown_grace", "max_workers", "store", "public_url", "default_validity",
        "max_validity", "min_validity", "backdate", "crl_validity", "ocsp_validity",
        "auth_cache_ttl", "admins", "admin_dns_names", "admin_ip_ranges", "identity",
        "dns_names", "ip_ranges",
    ):  # fmt: skip
        assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), key
    assert "\n# [[policy.workloads]]\n" in text


# -- precedence: file < environment < flags -----------------------------------------------------

LISTEN_IN_FILE = '[server]\nlisten = "127.0.0.1:7000"\n'


def test_file_setting_replaces_the_default(tmp_path: Path) -> None:
    write_config(tmp_path, LISTEN_IN_FILE)
    assert load_config(tmp_path, env={}).server.listen == "127.0.0.1:7000"


def test_env_signet_listen_overrides_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, LISTEN_IN_FILE)
    config = load_config(tmp_path, env={"SIGNET_LISTEN": "0.0.0.0:9000"})
    assert config.server.listen == "0.0.0.0:9000"


def test_flag_override_beats_env_and_file(tmp_path: Path) -> None:
    write_config(tmp_path, LISTEN_IN_FILE)
    config = load_config(
        tmp_path, overrides={"listen": "127.0.0.1:1"}, env={"SIGNET_LISTEN": "0.0.0.0:9000"}
    )
    assert config.server.listen == "127.0.0.1:1"


def test_flag_override_of_none_means_not_given(tmp_path: Path) -> None:
    write_config(tmp_path, LISTEN_IN_FILE)
    config = load_config(
        tmp_path, overrides={"listen": None}, env={"SIGNET_LISTEN": "0.0.0.0:9000"}
    )
    assert config.server.listen == "0.0.0.0:9000"


def test_empty_env_variable_does_not_override_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, LISTEN_IN_FILE)
    assert load_config(tmp_path, env={"SIGNET_LISTEN": ""}).server.listen == "127.0.0.1:7000"


def test_env_names_are_signet_plus_the_flag_name_in_capitals(tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        env={
            "SIGNET_STORE": "sqlite:////var/lib/signet/other.db",
            "SIGNET_LOG_LEVEL": "DEBUG",
            "SIGNET_SERVER_NAME": "ca.internal, 10.0.0.5,,",
            "SIGNET_PUBLIC_URL": "http://ca.internal:8080",
            "SIGNET_TRUST_DOMAIN": "env.example",
            "SIGNET_KEY_TYPE": "ec-p384",
        },
    )
    assert config.server.store == config.store_url == "sqlite:////var/lib/signet/other.db"
    assert config.server.log_level == "debug"
    assert config.server.server_names == ("ca.internal", "10.0.0.5")
    assert config.issuance.public_urls == PublicUrls("http://ca.internal:8080")
    assert config.trust_domain == "env.example"
    assert config.policy.trust_domain == "env.example"
    assert config.policy.admins == ("spiffe://env.example/admin", "spiffe://env.example/admin/*")
    assert config.key_type == "ec-p384"


def test_server_names_and_public_url_from_the_file(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[server]\nserver_names = ["ca.internal", "10.0.0.5"]\npublic_url = "http://ca:80"\n',
    )
    config = load_config(tmp_path, env={})
    assert config.server.server_names == ("ca.internal", "10.0.0.5")
    assert config.issuance.public_urls == PublicUrls("http://ca:80")


def test_without_public_url_issued_certificates_carry_no_urls(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).issuance.public_urls is None


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nlisen = "x"\n', "unknown setting(s) lisen in [server]"),
        (
            '[issuance]\nmax_validty = "1d"\nfoo = 1\n',
            "unknown setting(s) foo, max_validty in [issuance]",
        ),
        ("[policy]\nadmin = []\n", "unknown setting(s) admin in [policy]"),
        ('trust_domian = "x"\n', "unknown setting(s) trust_domian in [top level]"),
        (
            '[[policy.workloads]]\nidentity = "spiffe://signet.local/x"\ndns = ["a"]\n',
            "unknown setting(s) dns in [policy.workloads #1]",
        ),
    ],
)
def test_unknown_setting_is_configuration_error_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    write_config(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path, env={})
    assert str(info.value) == f"config.toml: {message}"


@pytest.mark.parametrize("value", ['"30 days"', '"1y"', '"-1h"', '"24"', "24", '""'])
def test_bad_duration_is_configuration_error_naming_the_setting(tmp_path: Path, value: str) -> None:
    write_config(tmp_path, f"[issuance]\nmax_validity = {value}\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path, env={})
    assert str(info.value).startswith("config.toml [issuance] max_validity: invalid duration")


def test_bad_server_duration_is_configuration_error_naming_the_section(tmp_path: Path) -> None:
    write_config(tmp_path, '[server]\nshutdown_grace = "soon"\n')
    with pytest.raises(ConfigurationError, match=r"^config.toml \[server\] shutdown_grace: "):
        load_config(tmp_path, env={})


def test_huge_duration_is_configuration_error(tmp_path: Path) -> None:
    write_config(tmp_path, '[issuance]\nmax_validity = "99999999999d"\n')
    with pytest.raises(ConfigurationError, match="max_validity"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize("value", ['"many"', "0", "-1"])
def test_bad_max_workers_is_configuration_error(tmp_path: Path, value: str) -> None:
    write_config(tmp_path, f"[server]\nmax_workers = {value}\n")
    with pytest.raises(ConfigurationError, match="max_workers"):
        load_config(tmp_path, env={})


def test_max_workers_from_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, "[server]\nmax_workers = 4\n")
    assert load_config(tmp_path, env={}).server.max_workers == 4


def test_toml_syntax_error_is_configuration_error_naming_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, "[server\nlisten = \n")
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path, env={})
    assert str(info.value).startswith(f"{tmp_path / 'config.toml'}: ")


@pytest.mark.parametrize("td", ["Signet.Local", "signet local", ".", ""])
def test_bad_trust_domain_is_configuration_error(tmp_path: Path, td: str) -> None:
    write_config(tmp_path, f'trust_domain = "{td}"\n')
    with pytest.raises(ConfigurationError, match="invalid trust domain"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize("key_type", ["rsa-2048", "rsa-4096", "ec-p521", "dsa"])
def test_key_type_that_is_not_a_ca_key_type_is_configuration_error(
    tmp_path: Path, key_type: str
) -> None:
    write_config(tmp_path, f'key_type = "{key_type}"\n')
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path, env={})
    assert str(info.value) == (
        f"key_type {key_type!r}: choose one of ec-p256, ec-p384, rsa-3072, ed25519, ml-dsa-65"
    )


def test_bad_log_level_is_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="log_level 'verbose': choose debug, info"):
        load_config(tmp_path, env={"SIGNET_LOG_LEVEL": "verbose"})


# -- issuance bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_", "default", "max_"),
    [("1h", "30m", "2h"), ("1m", "3h", "2h"), ("2h", "1h", "30m")],
    ids=["default-below-min", "default-above-max", "min-above-max"],
)
def test_issuance_needs_min_le_default_le_max(
    tmp_path: Path, min_: str, default: str, max_: str
) -> None:
    write_config(
        tmp_path,
        f'[issuance]\nmin_validity = "{min_}"\ndefault_validity = "{default}"\n'
        f'max_validity = "{max_}"\n',
    )
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path, env={})
    assert str(info.value) == (
        "config.toml [issuance]: need min_validity <= default_validity <= max_validity"
    )


def test_issuance_bounds_may_be_equal(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[issuance]\nmin_validity = "1h"\ndefault_validity = "1h"\nmax_validity = "1h"\n',
    )
    issuance = load_config(tmp_path, env={}).issuance
    assert issuance.min_validity == issuance.default_validity == issuance.max_validity == H


def test_issuance_durations_from_the_file(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "[issuance]\n"
        'default_validity = "12h"\nmax_validity = "7d"\nmin_validity = "90s"\nbackdate = "2m"\n'
        'crl_validity = "1d12h"\nocsp_validity = "30m"\nauth_cache_ttl = "5s"\n',
    )
    i = load_config(tmp_path, env={}).issuance
    assert (
        i.default_validity, i.max_validity, i.min_validity, i.backdate,
        i.crl_validity, i.ocsp_validity, i.auth_cache_ttl,
    ) == (12 * H, 7 * D, 90 * S, 2 * M, 36 * H, 30 * M, 5 * S)  # fmt: skip


def test_max_names_from_the_file(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).issuance.max_names == 100
    write_config(tmp_path, "[issuance]\nmax_names = 7\n")
    assert load_config(tmp_path, env={}).issuance.max_names == 7


@pytest.mark.parametrize("value", ["0", "-1", '"100"', "true", "1.5"])
def test_bad_max_names_is_configuration_error(tmp_path: Path, value: str) -> None:
    write_config(tmp_path, f"[issuance]\nmax_names = {value}\n")
    with pytest.raises(ConfigurationError, match=r"\[issuance\] max_names: .* not a positive"):
        load_config(tmp_path, env={})


# -- policy -------------------------------------------------------------------------------------

WORKLOADS = """
[policy]
admins = ["spiffe://signet.local/ops/*"]
admin_dns_names = ["*.corp.internal"]
admin_ip_ranges = ["10.0.0.0/8"]

[[policy.workloads]]
identity = "spiffe://signet.local/web/*"
dns_names = ["*.web.internal", "web.internal"]
ip_ranges = ["10.1.0.0/16", "fd00::/8"]

[[policy.workloads]]
identity = "spiffe://signet.local/batch/**"
"""


def test_policy_and_workloads_are_parsed(tmp_path: Path) -> None:
    write_config(tmp_path, WORKLOADS)
    policy = load_config(tmp_path, env={}).policy
    assert policy == Policy(
        trust_domain="signet.local",
        admins=("spiffe://signet.local/ops/*",),
        admin_dns_names=("*.corp.internal",),
        admin_ip_ranges=(ipaddress.ip_network("10.0.0.0/8"),),
        workloads=(
            WorkloadRule(
                identity="spiffe://signet.local/web/*",
                dns_names=("*.web.internal", "web.internal"),
                ip_ranges=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8")),
            ),
            WorkloadRule(identity="spiffe://signet.local/batch/**"),
        ),
    )
    assert policy.rules_for("spiffe://signet.local/web/a") == [policy.workloads[0]]


def test_workload_ip_range_with_host_bits_is_widened_to_its_network(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[[policy.workloads]]\nidentity = "spiffe://signet.local/x"\nip_ranges = ["10.1.2.3/8"]\n',
    )
    rule = load_config(tmp_path, env={}).policy.workloads[0]
    assert rule.ip_ranges == (ipaddress.ip_network("10.0.0.0/8"),)


def test_workload_without_identity_is_configuration_error(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[[policy.workloads]]\nidentity = "spiffe://signet.local/a"\n'
        '[[policy.workloads]]\ndns_names = ["b.internal"]\n',
    )
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path, env={})
    assert str(info.value) == "config.toml [[policy.workloads]] #2 needs identity"


def test_workload_with_bad_ip_range_is_configuration_error(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[[policy.workloads]]\nidentity = "spiffe://signet.local/a"\nip_ranges = ["10.0.0.0/33"]\n',
    )
    with pytest.raises(ConfigurationError, match=r"^config.toml \[\[policy.workloads\]\] #1: "):
        load_config(tmp_path, env={})


def test_bad_admin_ip_range_is_configuration_error(tmp_path: Path) -> None:
    write_config(tmp_path, '[policy]\nadmin_ip_ranges = ["not-a-network"]\n')
    with pytest.raises(ConfigurationError, match=r"^config.toml \[policy\]: .*not-a-network"):
        load_config(tmp_path, env={})


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", 90 * S),
        ("15m", 15 * M),
        ("24h", 24 * H),
        ("30d", 30 * D),
        ("1h30m", 90 * M),
        ("1d2h3m4s", D + 2 * H + 3 * M + 4 * S),
        ("0s", dt.timedelta(0)),
        (" 24H ", 24 * H),
        ("90m", 90 * M),
    ],
)
def test_parse_duration_reads_numbers_with_units(text: str, delta: dt.timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize(
    "text", ["", "  ", "10", "h", "1x", "-1h", "1.5h", "1h 30m", "24 h", "1w", "one hour", "1hh"]
)
def test_parse_duration_refuses_other_text_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == (
        f"invalid duration {text!r}: use a number and a unit (s, m, h, d), e.g. 24h"
    )


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "0s"),
        (S, "1s"),
        (90 * S, "1m30s"),
        (90 * M, "1h30m"),
        (D, "1d"),
        (30 * D, "30d"),
        (D + H + M + S, "1d1h1m1s"),
        (D + S, "1d1s"),
    ],
)
def test_format_duration_gives_the_shortest_form(delta: dt.timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize(
    "delta",
    [
        dt.timedelta(0),
        S,
        59 * S,
        M,
        3599 * S,
        H,
        86399 * S,
        D,
        dt.timedelta(days=400, seconds=12345),
        *[
            getattr(IssuanceSettings(), f)
            for f in ("default_validity", "max_validity", "min_validity", "backdate")
        ],
    ],
)
def test_format_then_parse_round_trips(delta: dt.timedelta) -> None:
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize("text", ["90m", "3600s", "1d24h", "0m", "120s"])
def test_parse_then_format_gives_the_canonical_form_of_the_same_value(text: str) -> None:
    canonical = format_duration(parse_duration(text))
    assert parse_duration(canonical) == parse_duration(text)
    assert format_duration(parse_duration(canonical)) == canonical


@pytest.mark.parametrize(
    "pattern",
    [
        "spiffe://other.domain/admin",
        "https://signet.local/admin",
        "admin",
        "spiffe://signet.local/a//b",
    ],
)
def test_admin_patterns_must_be_spiffe_ids_of_the_trust_domain(
    tmp_path: Path, pattern: str
) -> None:
    write_config(tmp_path, f'trust_domain = "signet.local"\n[policy]\nadmins = ["{pattern}"]\n')
    with pytest.raises(ConfigurationError, match="not a SPIFFE ID pattern"):
        load_config(tmp_path, env={})


def test_workload_identity_patterns_are_validated(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        'trust_domain = "signet.local"\n[[policy.workloads]]\nidentity = "spiffe://x.y/web/*"\n',
    )
    with pytest.raises(ConfigurationError, match=r"policy.workloads\]\] #1"):
        load_config(tmp_path, env={})


def test_trust_domain_flag_conflicting_with_the_file_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path, 'trust_domain = "signet.local"\n')
    with pytest.raises(ConfigurationError, match="fixed when the CA is created"):
        load_config(tmp_path, {"trust_domain": "other.local"}, env={})
