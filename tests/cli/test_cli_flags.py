"""Every flag stunnerd has parses here, so a Dataplane's `args` written for stunnerd never stops
the pod with an argparse exit 2.

The list is stunnerd's flag set as it is today: cmd/stunnerd/main.go (l7mp/stunner), the
Kubernetes client flags it adds (k8s.io/cli-runtime v0.36 genericclioptions.ConfigFlags) and
its CDS discovery flags (pkg/config/client CDSConfigFlags).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.stunnerd_proc import stunnerd_command

from stunner_dp import __version__
from stunner_dp.cli import stunnerd_parser

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "stunnerd.yaml"
RUN_TIMEOUT = 30

# (long name, shorthand or "", kind): "bool", "int", "str", or "list" (repeatable)
STUNNERD_FLAGS: tuple[tuple[str, str, str], ...] = (
    # cmd/stunnerd/main.go
    ("config", "c", "str"),
    ("log", "l", "str"),
    ("log-format", "", "str"),
    ("id", "i", "str"),
    ("watch", "w", "bool"),
    ("udp-thread-num", "u", "int"),
    ("dry-run", "d", "bool"),
    ("force-ready-status", "", "bool"),
    ("verbose", "v", "bool"),
    # genericclioptions.ConfigFlags.AddFlags (kubectl's)
    ("kubeconfig", "", "str"),
    ("cache-dir", "", "str"),
    ("client-certificate", "", "str"),
    ("client-key", "", "str"),
    ("token", "", "str"),
    ("as", "", "str"),
    ("as-uid", "", "str"),
    ("as-group", "", "list"),
    ("as-user-extra", "", "list"),
    ("username", "", "str"),
    ("password", "", "str"),
    ("cluster", "", "str"),
    ("user", "", "str"),
    ("namespace", "n", "str"),
    ("context", "", "str"),
    ("server", "s", "str"),
    ("tls-server-name", "", "str"),
    ("insecure-skip-tls-verify", "", "bool"),
    ("certificate-authority", "", "str"),
    ("request-timeout", "", "str"),
    ("disable-compression", "", "bool"),
    # CDSConfigFlags.AddFlags
    ("cds-server-address", "", "str"),
    ("cds-server-namespace", "", "str"),
    ("cds-server-port", "", "int"),
)

SAMPLE = {"str": "text", "int": "7", "list": "a=b"}
VALUES = {"log-format": "json", "log": "all:DEBUG"}


def flag_forms(name: str, short: str, kind: str) -> list[list[str]]:
    """Each way pflag takes the flag: --name v, --name=v, -s v, -s=v, -sv; --b, --b=false."""
    if kind == "bool":
        forms = [[f"--{name}"], [f"--{name}=true"], [f"--{name}=false"]]
        return forms + ([[f"-{short}"], [f"-{short}=true"]] if short else [])
    value = VALUES.get(name, SAMPLE[kind])
    forms = [[f"--{name}", value], [f"--{name}={value}"]]
    if short:
        forms += [[f"-{short}", value], [f"-{short}={value}"], [f"-{short}{value}"]]
    return forms


def dest(name: str) -> str:
    return name.replace("-", "_")


@pytest.mark.parametrize(("name", "short", "kind"), STUNNERD_FLAGS, ids=lambda x: str(x))
def test_every_stunnerd_flag_parses(name: str, short: str, kind: str) -> None:
    parser = stunnerd_parser()
    for form in flag_forms(name, short, kind):
        args = parser.parse_args(form)
        value = getattr(args, dest(name))
        if kind == "bool":
            assert value is (not form[0].endswith("=false")), form
        elif kind == "int":
            assert value == 7, form
        elif kind == "list":
            assert value == ["a=b"], form
        else:
            assert value == VALUES.get(name, "text"), form


def test_the_operators_args_parse() -> None:
    args = stunnerd_parser().parse_args(["-w", "--udp-thread-num=16"])
    assert args.watch and args.udp_thread_num == 16


def test_short_bools_combine_as_in_pflag() -> None:
    args = stunnerd_parser().parse_args(["-wdv", "-c", "x.yaml"])
    assert args.watch and args.dry_run and args.verbose and args.config == "x.yaml"


def stunnerd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STUNNER_", "CDS_"))}
    return subprocess.run(
        [*stunnerd_command(), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env={**base, **(env or {})},
        cwd=REPO,
    )


def test_v_is_verbose_not_the_version() -> None:
    """`-v` is stunnerd's --verbose (= -l all:DEBUG): the run goes on, at DEBUG."""
    result = stunnerd("-v", "-d", "-c", str(DEFAULT_CONFIG))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["version"] == "v1"
    assert __version__ not in result.stdout
    args = stunnerd_parser().parse_args(["-v"])
    assert args.verbose and args.log == ""


def test_version_flag_prints_the_version() -> None:
    result = stunnerd("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize(
    "how",
    [("-c", "k8s"), ("--config=k8s",), ()],
    ids=["-c k8s", "--config=k8s", "STUNNER_CONFIG_ORIGIN=k8s"],
)
def test_k8s_discovery_without_an_address_is_refused_naming_the_fix(how: tuple[str, ...]) -> None:
    env = {} if how else {"STUNNER_CONFIG_ORIGIN": "k8s"}
    result = stunnerd(*how, "-w", "--kubeconfig", "/nonexistent", "-n", "stunner", env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "STUNNER_CONFIG_ORIGIN" in lines[0] and "k8s" in lines[0]
    assert "usage:" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "env", "origin"),
    [
        (["-c", "k8s", "--cds-server-address", "10.0.0.5"], {}, "http://10.0.0.5:13478"),
        (
            ["-c", "k8s", "--cds-server-address=fd00::5", "--cds-server-port=1234"],
            {},
            "http://[fd00::5]:1234",
        ),
        (
            ["-c", "k8s"],
            {"CDS_SERVER_ADDR": "10.0.0.6", "CDS_SERVER_PORT": "99"},
            "http://10.0.0.6:99",
        ),
        (
            [],
            {"STUNNER_CONFIG_ORIGIN": "k8s", "CDS_SERVER_ADDR": "10.0.0.7"},
            "http://10.0.0.7:13478",
        ),
    ],
)
def test_k8s_discovery_with_an_address_uses_it(
    argv: list[str], env: dict[str, str], origin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stunnerd's DiscoverK8sCDSServer: an explicit CDS address skips the Kubernetes API."""
    from stunner_dp.cli import resolve_config_origin

    for name in ("STUNNER_CONFIG_ORIGIN", "CDS_SERVER_ADDR", "CDS_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = stunnerd_parser().parse_args(argv)
    resolve_config_origin(args)
    assert args.config == origin


def test_dry_run_warns_of_fields_that_have_no_effect(tmp_path: Path) -> None:
    """An inert field is warned about; the offload fields, which the kernel fast path reads,
    are kept in the effective config and not warned about."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config.setdefault("admin", {}).update(
        offload_engine="xdp", offload_interfaces=["eth0"], license_config={"key": "x"}
    )
    path = tmp_path / "offload.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = stunnerd("-d", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["admin"]["offload_engine"] == "XDP"
    warned = [line for line in result.stderr.splitlines() if "has no effect" in line]
    assert len(warned) == 1 and "admin.license_config" in warned[0], result.stderr
