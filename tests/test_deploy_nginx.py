"""The edge: the route table agrees with the services and the shipped nginx config.

The table (`trunk8_shared.routes`) is checked against the routes each service's app really
registers, the shipped `deploy/nginx/` files against what the generator makes of the
table, `nginx -t` against the files, and then nginx itself, in front of a redirector, a
files service and an admin on their own ports, against what the edge must do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import aiohttp
import pytest
import yaml
from conftest import StartSystem, wait_until, write
from nginxkit import DEPLOY_NGINX, NginxEdge, free_port
from test_admin_support import Browser

from trunk8 import deploy
from trunk8.targets import SERVICES, build_app
from trunk8_shared.codes import ROUTED_SEGMENTS
from trunk8_shared.routes import PUBLIC_ROUTES, service_for
from trunk8_shared.settings import Settings


def _sample(canonical: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", canonical)


def _registered(tmp_path: Path) -> dict[str, list[str]]:
    """Each public service's registered paths (canonical), /-/ and /{code} left out."""
    paths: dict[str, list[str]] = {}
    for service in SERVICES:
        app = build_app(service, Settings(data_dir=str(tmp_path / "data")))
        paths[service] = [
            r.canonical
            for r in app.router.resources()
            if not r.canonical.startswith("/-/") and r.canonical != "/{code}"
        ]
    return paths


def test_route_table_matches_what_the_services_register(tmp_path: Path) -> None:
    registered = _registered(tmp_path)
    assert registered.pop("config-watcher") == [], "the watcher has no public routes"
    for service, paths in registered.items():
        for path in paths:
            assert service_for(_sample(path)) == service, f"{path} would not reach {service}"
    for route in PUBLIC_ROUTES:  # no stale rows: each one reaches a route of its service
        if route.path == "/" and not route.exact:
            continue
        paths = registered[route.service]
        if route.exact:
            assert route.path in paths, route
        else:
            assert any(p.startswith(route.path) for p in paths), route
        first = route.path.strip("/").split("/")[0]
        assert not first or first in ROUTED_SEGMENTS, f"a code could take {first!r}"
    assert service_for("/some-code") == service_for("/users-x") == "redirector"
    assert service_for("/-/metrics") is None and service_for("/-/ready") is None


def test_shipped_nginx_config_is_the_generated_one(tmp_path: Path) -> None:
    assert deploy.main(["nginx", "--check", str(DEPLOY_NGINX)]) == 0
    copy = tmp_path / "nginx"
    assert deploy.main(["nginx", "--out", str(copy)]) == 0
    routes = copy / "trunk8-routes.conf"
    routes.write_text(routes.read_text().replace("location /f/", "location /files/"))
    assert deploy.main(["nginx", "--check", str(copy)]) == 1
    text = (DEPLOY_NGINX / "trunk8-routes.conf").read_text()
    for route in PUBLIC_ROUTES:  # every row is a location of the right upstream
        match = f"= {route.path}" if route.exact else route.path
        block = text.split(f"location {match} {{\n", 1)[1].split("}", 1)[0]
        assert f"proxy_pass http://trunk8_{route.service};" in block, route


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    edge = NginxEdge(tmp_path / "nginx", deploy.Upstreams())
    checked = edge.check()
    assert checked.returncode == 0, checked.stderr
    # The example site as an operator installs it (its includes under /etc/nginx/trunk8/).
    site_dir = tmp_path / "etc-nginx-trunk8"
    site_dir.mkdir()
    for name in ("trunk8-routes.conf", "trunk8-upstreams.conf"):
        (site_dir / name).write_text((DEPLOY_NGINX / name).read_text())
    (site_dir / "trunk8-http.conf").write_text(deploy.render_http(str(tmp_path / "cache")))
    site = (
        (DEPLOY_NGINX / "trunk8-site.conf").read_text().replace("/etc/nginx/trunk8", str(site_dir))
    )
    main = edge.config.read_text()
    http_body = main.split("http {", 1)[1].split("    include", 1)[0]  # temp paths, logs
    edge.config.write_text(main.split("http {", 1)[0] + "http {" + http_body + site + "}\n")
    checked = edge.check()
    assert checked.returncode == 0, checked.stderr


def test_the_deploy_examples_trust_nginx_and_only_nginx() -> None:
    deploy_dir = DEPLOY_NGINX.parent
    env = dict(
        line.split("=", 1)
        for line in (deploy_dir / "systemd" / "trunk8.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert (env["TRUNK8_HOST"], env["TRUNK8_TRUSTED_PROXIES"]) == ("127.0.0.1", "127.0.0.1")
    compose = yaml.safe_load((deploy_dir / "compose.yaml").read_text())
    services = compose["services"]
    nginx_address = services["nginx"]["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnet)
    assert services["admin"]["environment"]["TRUNK8_TRUSTED_PROXIES"] == nginx_address
    assert "ports" not in services["admin"]  # reached only through nginx


async def raw_status(port: int, target: str) -> int:
    """The status nginx answers for a request target sent byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout=5)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_the_edge_routes_limits_and_caches(
    start_system: StartSystem, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = data_dir / "users" / "bob" / "assets"
    write(assets / "big.txt", "0123456789" * 1000)
    write(assets / "page.md", "# Hello edge\n")
    write(
        data_dir / "users" / "bob" / "links.toml",
        '[links]\ndocs = { type = "redirect", url = "https://example.com/docs" }\n'
        'big = { type = "file", path = "big.txt" }\n'
        'page = { type = "markdown", path = "page.md" }\n',
    )
    await start_system("config-watcher")
    redirector = await start_system("redirector", files_mode="accel")
    files = await start_system("files")
    # As deploy/ sets it up: the admin trusts nginx (here on loopback) to name the client.
    monkeypatch.setenv("TRUNK8_TRUSTED_PROXIES", "127.0.0.1")
    monkeypatch.setenv("TRUNK8_LOGIN_ATTEMPTS", "2")
    admin = await start_system("admin")
    dead = f"127.0.0.1:{free_port()}"  # a redirector that is down: tried, then skipped
    upstreams = deploy.Upstreams(
        redirector=(dead, f"127.0.0.1:{redirector.server.port}"),
        files=(f"127.0.0.1:{files.server.port}",),
        admin=(f"127.0.0.1:{admin.server.port}",),
    )
    edge = NginxEdge(tmp_path / "nginx", upstreams)
    edge.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def get(
                path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
                async with http.get(edge.base + path, allow_redirects=False, headers=headers) as r:
                    return r.status, dict(r.headers), await r.read()

            async def served() -> bool:
                return (await get("/page"))[0] == 200

            await wait_until(served, timeout=10)
            for _ in range(4):  # the dead redirector never costs a request
                status, headers, _ = await get("/docs")
                assert (status, headers["Location"]) == (302, "https://example.com/docs")
            status, headers, body = await get("/big", headers={"Range": "bytes=10-19"})
            assert (status, body) == (206, b"0123456789"), edge.error_log()
            assert "X-Accel-Redirect" not in headers
            status, _, body = await get("/page")
            assert status == 200 and b"Hello edge" in body
            assert (await get("/f/big"))[0] == 200
            private_paths = (
                "/-/metrics", "/-/ready", "/%2D/metrics", "//-/metrics", "/f/../-/ready",
                "/_trunk8_files/big", "/%5Ftrunk8_files/big", "//_trunk8_files/big",
            )  # fmt: skip
            assert await raw_status(edge.port, "/d%6Fcs") == 302  # decoded, then routed
            for private in private_paths:  # sent as they are, no client normalising them
                assert await raw_status(edge.port, private) == 404, private
            status, _, body = await get("/auth/login")
            assert status == 200 and b"password" in body.lower()
            css = "/static/bootswatch/flatly/bootstrap.min.css"
            first = await get(css, headers={"Accept-Encoding": "gzip"})
            second = await get(css, headers={"Accept-Encoding": "gzip"})
            assert first[0] == second[0] == 200 and first[2] == second[2]
            assert second[1]["X-Cache-Status"] == "HIT"
            assert second[1].get("Content-Encoding") == "gzip"

            async def failed_sign_ins(source: str, count: int) -> list[tuple[int, str]]:
                """Failed sign-ins (own usernames) from `source`, another loopback address."""
                client = Browser(admin, edge.base, source_address=source)
                try:
                    answers = []
                    for n in range(count):
                        form = {"username": f"{source}-{n}", "password": "wrong"}
                        status, _, body = await client.post("/auth/login", form)
                        answers.append((status, body))
                    return answers
                finally:
                    await client.close()

            # The admin's own throttle tells clients apart behind nginx (X-Forwarded-For).
            first = await failed_sign_ins("127.0.0.2", 3)
            assert [status for status, _ in first] == [200, 200, 429]
            assert "Too many login attempts" in first[2][1]  # the admin's 429, not nginx's
            assert [status for status, _ in await failed_sign_ins("127.0.0.3", 1)] == [200]
            # Sign-in is tightly limited per client: a burst past it is refused at the edge.
            statuses = [(await get("/auth/login"))[0] for _ in range(12)]
            assert 429 in statuses and statuses[0] == 200
            assert (await get("/docs"))[0] == 302  # other paths keep their own zone
    finally:
        edge.stop()
