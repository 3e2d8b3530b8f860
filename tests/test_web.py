"""The web page as a person uses it, in Debian's real Chromium (headless, driven by playwright):
log in once (the token becomes an HttpOnly, SameSite=Strict cookie, never part of a URL), the
collapsible ownership tree with type filters and counts, hostnames and container names on the
boxes, the containers table, the pid view with its processes, and a search count that follows
the view. Screenshots are taken into the test's tmp dir and the elements checked in the page.
Also: the OpenAPI document has a typed schema for every response and declares the bearer scheme."""

from __future__ import annotations

import os
import secrets
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from namespacefs.kernel import NS_TYPES
from namespacefs.service.app import SESSION_COOKIE, make_app, session_value
from namespacefs.service.live import Live
from runtimes import Started, start_bwrap, started_fixture, wait_for
from test_service import CHROMIUM_ARGS, Daemon, Holder, holders

__all__ = ["holders", "started_fixture"]  # fixtures
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nsfs-web"))
    yield d
    d.stop()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    return struct.unpack(">II", data[16:24])


def shot(page: Any, path: Path, **kw: Any) -> Path:
    page.screenshot(path=str(path), **kw)
    width, height = png_size(path)
    assert width >= 100 and height >= 100 and path.stat().st_size > 5_000, (path, width, height)
    return path


def test_the_token_is_traded_for_a_cookie_and_never_taken_from_a_url(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30) as tcp:
        page = tcp.get("/")
        assert page.status_code == 200  # the page itself holds no data
        csp = page.headers["content-security-policy"]
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert tcp.get("/api/status", params={"token": daemon.token}).status_code == 401
        assert tcp.post("/api/login", json={"token": daemon.token + "x"}).status_code == 401
        assert SESSION_COOKIE not in tcp.cookies
        ok = tcp.post("/api/login", json={"token": daemon.token})
        assert ok.status_code == 200 and ok.json() == {"ok": True}
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
        assert daemon.token not in cookie and tcp.cookies[SESSION_COOKIE] == session_value(daemon.token)
        assert tcp.get("/api/status").status_code == 200  # the cookie alone
        tcp.post("/api/logout")
        tcp.cookies.clear()
        assert tcp.get("/api/status").status_code == 401
    with httpx.Client(base_url=daemon.url, timeout=30, cookies={SESSION_COOKIE: session_value("another token")}) as forged:
        assert forged.get("/api/status").status_code == 401


def chromium(tmp: Path) -> Any:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (bootstrap.sh installs it)")
    return sync_api


def test_the_page_in_chromium(daemon: Daemon, holders: Callable[..., Holder], started: Started, tmp_path: Path) -> None:
    sync_api = chromium(tmp_path)
    hostname = f"webbox-{secrets.token_hex(3)}"
    _bwrap, init = start_bwrap(started, hostname, ["sleep", "1000"])
    sleeper = wait_for(lambda: next(iter(Path(f"/proc/{init}/task/{init}/children").read_text().split()), None),
                       what="the sandboxed sleep")
    uts = os.stat(f"/proc/{init}/ns/uts").st_ino
    userns = os.stat(f"/proc/{init}/ns/user").st_ino
    pidns = os.stat(f"/proc/{init}/ns/pid").st_ino

    def listed() -> bool:
        found = daemon.http.get("/api/containers").json()["containers"]
        return daemon.has(uts) and any(c["name"] == hostname and c["engine"] == "bwrap" for c in found)

    daemon.wait_for(listed)
    daemon.wait_for(lambda: daemon.http.get("/api/hostnames").json().get(str(uts)) == hostname)

    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=["--headless", *CHROMIUM_ARGS],
            viewport={"width": 1400, "height": 900})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"{daemon.url}/")
            # --- logging in ------------------------------------------------------------------
            page.locator("#login").wait_for(state="visible", timeout=30_000)
            shot(page, tmp_path / "1-login.png")
            page.fill("#token", "not the token")
            page.click("#login-form button[type=submit]")
            page.locator("#login-error", has_text="wrong token").wait_for(timeout=30_000)
            page.fill("#token", daemon.token)
            page.click("#login-form button[type=submit]")
            page.locator("#login").wait_for(state="hidden", timeout=30_000)
            assert daemon.token not in page.url
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies[SESSION_COOKIE]["httpOnly"] is True and cookies[SESSION_COOKIE]["sameSite"] == "Strict"
            assert cookies[SESSION_COOKIE]["value"] != daemon.token
            assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read it

            # --- the ownership tree: boxes with hostnames and container names ---------------
            node = page.locator(f'.node[data-inode="{uts}"]')
            node.wait_for(timeout=60_000)
            assert f"uts:[{uts}]" in node.inner_text()
            assert node.locator(".host").inner_text() == f"host {hostname}"
            assert hostname in node.locator(".ctr").inner_text()
            shot(page, tmp_path / "2-tree.png", full_page=False)
            # the type filters carry the count of each type: that of the boxes in the tree (other
            # tests on this host make namespaces too: the page's own snapshot is the reference)
            filters = page.locator("input.type-filter")
            assert filters.count() == len(NS_TYPES)
            # labels, boxes and the page's snapshot read at one moment (a live refresh redraws all three)
            seen = page.evaluate("""() => ({
                labels: Object.fromEntries([...document.querySelectorAll('label.filter')].map(
                    l => [l.querySelector('input').dataset.type, l.textContent.trim()])),
                boxes: Object.fromEntries(TYPES.map(t => [t, document.querySelectorAll('.node.' + t).length])),
                snap: state.snap.namespaces.map(ns => ns.type)})""")
            counts = Counter(seen["snap"])
            for t in NS_TYPES:
                assert seen["labels"][t] == f"{t} ({counts[t]})", (t, seen["labels"][t], counts[t])
                assert seen["boxes"][t] == counts[t], (t, seen["boxes"][t], counts[t])
            # the sandbox's namespaces hang below its user namespace; collapsing it hides them
            owner = page.locator(f'li:has(> .row > .node[data-inode="{userns}"])')
            assert owner.locator(f'.node[data-inode="{uts}"]').count() == 1
            owner.locator("> .row > button.toggle").click()
            page.locator(f'.node[data-inode="{uts}"]').wait_for(state="hidden", timeout=30_000)
            assert "below" in owner.locator("> .row").inner_text()
            assert owner.locator("> .row > button.toggle").get_attribute("aria-expanded") == "false"
            shot(page, tmp_path / "3-collapsed.png")
            owner.locator("> .row > button.toggle").click()
            page.locator(f'.node[data-inode="{uts}"]').wait_for(state="visible", timeout=30_000)
            # filtering a type out removes its boxes, and only those
            page.uncheck('input[data-type="uts"]')
            assert page.evaluate("document.querySelectorAll('.node.uts').length") == 0
            assert page.evaluate("document.querySelectorAll('.node.net').length") > 0
            page.check('input[data-type="uts"]')
            assert page.evaluate("document.querySelectorAll('.node.uts').length === state.snap.namespaces.filter("
                                 "ns => ns.type === 'uts').length")

            # --- search: the count is what the current view highlights ------------------------
            page.fill("#search", hostname)
            page.locator(f'.node.match[data-inode="{uts}"]').wait_for(timeout=30_000)
            tree_hits = page.locator("#view .match").count()
            assert tree_hits >= 1 and page.inner_text("#matches") == f"{tree_hits} match{'es' if tree_hits != 1 else ''}"
            page.select_option("#mode", "containers")
            row = page.locator("tr.container-row.match", has_text=hostname)
            row.wait_for(timeout=30_000)
            assert page.inner_text("#matches") == f"{page.locator('#view .match').count()} match" + (
                "es" if page.locator("#view .match").count() != 1 else "")
            cells = row.locator("td").all_inner_texts()
            assert cells[0] == hostname and cells[1].startswith("bwrap") and cells[2] == "—"
            assert row.locator(f'a[data-inode="{uts}"]').inner_text() == f"uts:[{uts}]"
            shot(page, tmp_path / "4-containers.png")
            # the pod column: a pod is the group node its members hang below (the containers tree's
            # shape for Podman and Kubernetes pods), or what an engine's labels name
            pods = page.evaluate("""() => {
                const pod = {path: "/shop", name: "shop", group: true, labels: {group: "pod"}};
                const web = {path: "/shop/web", name: "web", labels: {}};
                const k8s = {path: "/k", name: "k", labels: {"io.kubernetes.pod.name": "api-7f9"}};
                const byPath = new Map([pod, web, k8s].map(c => [c.path, c]));
                return [podOf(web, byPath), podOf(pod, byPath), podOf(k8s, byPath)];
            }""")
            assert pods == ["shop", "(pod itself)", "api-7f9"]
            # a click on a namespace link shows its details
            row.locator(f'a[data-inode="{uts}"]').click()
            page.locator("#details", has_text=hostname).wait_for(timeout=30_000)

            # --- the pid view: pid namespaces with their processes ---------------------------
            page.fill("#search", "")
            page.select_option("#mode", "pid")
            pid_node = page.locator(f'.node.pid[data-inode="{pidns}"]')
            pid_node.wait_for(timeout=30_000)
            assert page.locator(".node:not(.pid)").count() == 0
            proc = page.locator(f'li.proc[data-pid="{sleeper}"]')
            assert "sleep" in proc.inner_text() and proc.inner_text().startswith("pid 2 (host ")
            page.fill("#search", str(sleeper))
            page.locator(f'li.proc.match[data-pid="{sleeper}"]').wait_for(timeout=30_000)
            hits = page.locator("#view .match").count()
            assert page.inner_text("#matches") == f"{hits} match{'es' if hits != 1 else ''}"
            shot(page, tmp_path / "5-pid.png")

            # --- live: a namespace made now appears without a reload, and the count follows ----
            page.select_option("#mode", "owner")
            page.fill("#search", "uts:[")
            later = holders("--uts")
            page.locator(f'.node.match[data-inode="{later.ns("uts")[0]}"]').wait_for(timeout=60_000)
            now = page.evaluate("""() => ({text: document.getElementById('matches').textContent,
                                        hits: document.querySelectorAll('#view .match').length,
                                        uts: state.snap.namespaces.filter(ns => ns.type === 'uts').length})""")
            assert now["hits"] == now["uts"] and now["text"] == f"{now['uts']} matches", now
            page.fill("#search", "")

            # --- logging out ends the session ------------------------------------------------
            page.click("#logout")
            page.locator("#login").wait_for(state="visible", timeout=30_000)
            assert page.evaluate("fetch('/api/status').then(r => r.status)") == 401
        finally:
            context.close()
    print("screenshots:", *sorted(p.name for p in tmp_path.glob("*.png")))


def test_openapi_has_a_typed_schema_for_every_response_and_the_bearer_scheme() -> None:
    app = make_app(Live(netlink=False), token="t")
    doc = app.openapi()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert schemes["session"]["in"] == "cookie" and schemes["session"]["name"] == SESSION_COOKIE
    assert {"bearer": []} in doc["security"]
    assert doc["paths"]["/api/login"]["post"]["security"] == [] and doc["paths"]["/"]["get"]["security"] == []
    checked = 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for code, response in op["responses"].items():
                content = response.get("content", {})
                assert content, (path, method, code)
                for media, body in content.items():
                    schema = body.get("schema")
                    assert schema, (path, method, code, media)  # no {} schema
                    assert "$ref" in schema or schema.get("type") or schema.get("items") or schema.get("anyOf"), (
                        path, method, code, media, schema)
                    checked += 1
    assert checked >= 20
    snapshot = doc["paths"]["/api/snapshot"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert snapshot == {"$ref": "#/components/schemas/Snapshot"}
    for model in ("Namespace", "Process", "Holder", "Status", "Containers", "Accounting", "Event", "NamespaceDetails"):
        assert doc["components"]["schemas"][model]["properties"], model


def test_the_served_json_fits_the_models(daemon: Daemon) -> None:
    """The snapshot is served without passing through its model (it is serialized once per change):
    what is served must still be what the OpenAPI document says."""
    from namespacefs.service import models

    models.Snapshot.model_validate(daemon.http.get("/api/snapshot").json())
    models.Status.model_validate(daemon.http.get("/api/status").json())
    listed = daemon.http.get("/api/namespaces").json()
    # through its model the JSON keeps its shape: a holder has only the keys of its kind (no nulls)
    assert all(None not in h.values() for ns in listed for h in ns["holders"])
    assert all(set(ns) >= set(models.Namespace.model_fields) for ns in listed)
    first = listed[0]
    models.NamespaceDetails.model_validate(daemon.http.get(f"/api/namespaces/{first['inode']}").json())
    models.Containers.model_validate(daemon.http.get("/api/containers").json())
    models.Accounting.model_validate(daemon.http.get("/api/accounting").json())
