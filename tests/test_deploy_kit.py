"""The deploy/ kit agrees with the code: commands, flags, variables, ports, metric names.

Nothing here needs a container runtime or systemd running: each file is parsed, every
`trunk8` command it runs is parsed by the real command line, every `TRUNK8_*` variable it
sets must be one a service reads, every port must match the nginx upstreams and the
Prometheus targets, and every metric the alert rules and the dashboard use must be on a
running system's `/-/metrics`. `systemd-analyze verify` checks the units when present.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import StartSystem, write
from prometheus_client.parser import text_string_to_metric_families

from trunk8 import cli, deploy
from trunk8_admin import settings as admin_settings
from trunk8_shared import settings as shared_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROOT = DEPLOY.parent
SYSTEMD = DEPLOY / "systemd"
NATS_CONF = DEPLOY / "nats" / "nats-server.conf"
VENV_BIN = "/opt/trunk8/venv/bin"
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes"}
# The port of each process in the shipped layout (systemd, compose, Prometheus, nginx).
PORTS = {
    "redirector": {5101, 5102}, "files": {5201}, "admin": {5301},
    "config-watcher": {5401, 5402},  # the active one and a standby
}  # fmt: skip


def known_variables() -> set[str]:
    """Every TRUNK8_* variable a service reads."""
    return set(shared_settings._ENV_FIELDS) | set(admin_settings._ENV_FIELDS)


def nats_variables() -> set[str]:
    """The variables the shipped nats-server.conf takes from its environment."""
    return set(re.findall(r"\$(TRUNK8_NATS_[A-Z0-9_]+)", NATS_CONF.read_text()))


def parse_unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit's `Key=value` lines (repeated keys kept in order)."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def run_argv(argv: list[str]) -> Any:
    """Parse a `trunk8 …` command line with the real parser (SystemExit if it is wrong)."""
    assert argv[0] in ("trunk8", f"{VENV_BIN}/trunk8"), argv
    return cli._parser().parse_args(argv[1:])


def env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of an environment file."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value for key, value in pairs if not key.startswith("#")}


def test_systemd_units_run_real_commands_hardened() -> None:
    units = {path.name: parse_unit(path) for path in SYSTEMD.glob("*.service")}
    assert set(units) == {
        "trunk8-redirector@.service", "trunk8-files.service", "trunk8-admin.service",
        "trunk8-config-watcher@.service", "trunk8-nats.service",
    }  # fmt: skip
    for name, keys in units.items():
        for key, value in HARDENING.items():
            assert keys.get(key) == [value], (name, key)
        assert keys.get("DynamicUser") == ["yes"] or keys.get("User") == ["trunk8"], name
        port = "5401" if "config-watcher" in name else "5101"
        argv = shlex.split(keys["ExecStart"][0].replace("%i", port))
        if name == "trunk8-nats.service":
            assert argv == [f"{VENV_BIN}/nats-server", "-c", "/etc/trunk8/nats-server.conf"]
            continue
        args = run_argv(argv)
        assert args.command == "run" and args.port in PORTS[args.target], name
        assert name == f"trunk8-{args.target}{'@' if '%i' in keys['ExecStart'][0] else ''}.service"
    # Only the services that write the data directory may write it; redirectors never see it.
    writes = {n: k.get("ReadWritePaths", []) for n, k in units.items()}
    assert writes == {
        "trunk8-redirector@.service": [], "trunk8-files.service": [],
        "trunk8-admin.service": ["/srv/trunk8"], "trunk8-config-watcher@.service": ["/srv/trunk8"],
        "trunk8-nats.service": [],
    }  # fmt: skip
    assert units["trunk8-files.service"]["ReadOnlyPaths"] == ["/srv/trunk8"]
    assert units["trunk8-redirector@.service"]["Environment"] == ["TRUNK8_FILES_MODE=accel"]
    assert set(env_file(SYSTEMD / "trunk8.env.example")) <= known_variables()
    assert set(env_file(SYSTEMD / "nats.env.example")) | {"TRUNK8_NATS_STORE"} == nats_variables()


def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    names = []
    for path in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")]:
        # Point at binaries that exist here; the rest of each unit is checked as shipped.
        text = path.read_text().replace(VENV_BIN, str(Path(cli.sys.executable).parent))
        name = path.name.replace("@.service", "@5101.service")  # a port, for either template
        (tmp_path / name).write_text(text)
        names.append(name)
    done = subprocess.run(
        [analyze, "verify", "--man=no", *names],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_compose_and_dockerfile_match_the_tested_topology() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services: dict[str, dict[str, Any]] = compose["services"]
    ports: dict[str, set[int]] = {}
    for name, service in services.items():
        env = service.get("environment", {})
        if name.startswith("nats-"):
            assert service["entrypoint"] == ["nats-server", "-c", "/etc/trunk8/nats-server.conf"]
            assert set(env) == nats_variables() and env["TRUNK8_NATS_NAME"] == name
            continue
        if name in ("nginx", "prometheus"):
            for volume in service["volumes"]:
                assert (DEPLOY / volume.split(":")[0]).is_file(), volume
            continue
        assert set(env) <= known_variables(), name
        if name == "provision":
            argv = [*service["entrypoint"], *service["command"]]
            assert argv[:3] == ["python", "-m", "trunk8.deploy"]
            assert deploy.parser().parse_args(argv[3:]).replicas == 3
            continue
        args = run_argv(["trunk8", *service["command"]])
        ports.setdefault(args.target, set()).add(args.port)
        assert env.get("TRUNK8_PORT", str(args.port)) == str(args.port), name
        assert (env.get("TRUNK8_FILES_MODE") == "accel") == (args.target == "redirector")
        writes_data = any(v == "data:/srv/trunk8" for v in service.get("volumes", []))
        assert writes_data == (args.target in ("admin", "config-watcher")), name
    assert ports == PORTS
    upstreams = deploy.COMPOSE_UPSTREAMS
    for target in ("redirector", "files", "admin"):
        assert {int(a.rsplit(":", 1)[1]) for a in upstreams.of(target)} == PORTS[target]
        assert {int(a.rsplit(":", 1)[1]) for a in deploy.Upstreams().of(target)} == PORTS[target]

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), item
    assert 'ENTRYPOINT ["trunk8"]' in dockerfile and f"PATH={VENV_BIN}:" in dockerfile
    assert "COPY deploy/nats/nats-server.conf /etc/trunk8/nats-server.conf" in dockerfile
    run_argv(["trunk8", *json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M)[1])])  # type: ignore[index]


def test_prometheus_scrapes_every_process_of_the_layout() -> None:
    for file, hosts in (
        ("prometheus.yml", None),
        ("prometheus.compose.yml", {"redirector-1", "redirector-2", "files", "admin",
                                    "config-watcher", "config-watcher-standby"}),
    ):  # fmt: skip
        config = yaml.safe_load((DEPLOY / "prometheus" / file).read_text())
        assert config["rule_files"] == ["trunk8-alerts.yml"]
        for job in config["scrape_configs"]:
            assert job["metrics_path"] == "/-/metrics"
            targets = [t for c in job["static_configs"] for t in c["targets"]]
            service = job["job_name"].removeprefix("trunk8-")
            assert {int(t.rsplit(":", 1)[1]) for t in targets} == PORTS[service], file
            if hosts is not None:
                assert {t.rsplit(":", 1)[0] for t in targets} <= hosts
        assert {j["job_name"] for j in config["scrape_configs"]} == {f"trunk8-{s}" for s in PORTS}


def referenced_metrics() -> set[str]:
    """Metric names used by the alert rules and the dashboard."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "trunk8-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "prometheus" / "grafana-trunk8.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 20
    return {name for expr in exprs for name in re.findall(r"\btrunk8_[a-z0-9_]+", expr)}


async def test_alerts_and_dashboard_use_metrics_that_exist(
    start_system: StartSystem, data_dir: Path
) -> None:
    write(data_dir / "users" / "bob" / "assets" / "f.txt", "x" * 100)
    write(
        data_dir / "users" / "bob" / "links.toml",
        '[links]\ndl = { type = "file", path = "f.txt" }\n'
        'r = { type = "redirect", url = "https://example.com/" }\n',
    )
    system = await start_system()
    for path in ("/dl", "/r", "/nosuch", "/auth/login", "/-/ready"):  # labelled series appear
        await system.get(path)
    _, _, text = await system.get("/-/metrics")
    exposed = {
        name
        for family in text_string_to_metric_families(text)
        for name in (family.name, *(sample.name for sample in family.samples))
    }
    missing = referenced_metrics() - exposed
    assert not missing, f"rules or dashboard use metrics no process exports: {missing}"


def test_the_installed_package_carries_every_data_file() -> None:
    """The image installs Trunk8 from a wheel: each tracked data file must be package data."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # C sources are compiled into the wheel (ext-modules), not shipped as data.
    compiled = {source for module in project.get("ext-modules", []) for source in module["sources"]}
    for package, folder in project["package-dir"].items():
        declared = {
            path.relative_to(ROOT / folder).as_posix()
            for pattern in project.get("package-data", {}).get(package, [])
            for path in (ROOT / folder).glob(pattern)
        }
        data_files = {
            name.removeprefix(folder + "/")
            for name in tracked
            if name.startswith(folder + "/") and not name.endswith(".py") and name not in compiled
        }
        assert data_files <= declared, f"{package} would lose {sorted(data_files - declared)}"
