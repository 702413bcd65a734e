"""Authentication and authorization through the real app: every protected route refuses missing,
wrong, expired and revoked credentials; projects are isolated; logins are rate-limited."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from onebox.api.app import create_app
from onebox.api.auth import PUBLIC
from onebox.config import Settings
from onebox.services import apikeys, auth, identity, models
from onebox.services.context import App, open_app
from onebox.store.tables import ApiKey
from tests.auth_helpers import ADMIN_PASSWORD, bearer


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("auth") / "home", login_max_failures=3, login_lockout_seconds=60
    )


@pytest.fixture(scope="module")
def box(settings: Settings) -> Iterator[App]:
    app = open_app(settings)
    identity.bootstrap_admin(app, password=ADMIN_PASSWORD)
    models.install_builtin(app, "all-minilm-l6-v2")  # knowledge bases need an embedder
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(settings: Settings, box: App) -> Iterator[TestClient]:
    with TestClient(create_app(settings, supervise=False)) as c:
        yield c


def _key(box: App, **kw: object) -> dict:
    return apikeys.create_key(box, username="admin", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keys(box: App) -> dict[str, str]:
    """One key of each kind that must be refused, plus a good one."""
    good = _key(box, name="good")["secret"]
    expired = _key(box, name="expired")
    revoked = _key(box, name="revoked")
    apikeys.revoke_key(box, revoked["id"])
    with box.db.session() as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == expired["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(1))
        )
    wrong = re.sub(r"_[^_]+$", "_" + "A" * 43, good)  # right prefix, wrong secret
    return {"good": good, "expired": expired["secret"], "revoked": revoked["secret"], "wrong": wrong}


def _routes(client: TestClient) -> list[tuple[str, str]]:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    out = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                out.append((method.upper(), path))
    return out


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_protected_route_refuses_bad_credentials(client: TestClient, keys: dict[str, str]) -> None:
    routes = _routes(client)
    assert len(routes) > 30  # the walk covers the whole API, not a sample
    bad_headers = {
        "missing": {},
        "wrong": bearer(keys["wrong"]),
        "expired": bearer(keys["expired"]),
        "revoked": bearer(keys["revoked"]),
        "garbage key": bearer("not-a-key"),
        "malformed header": {"Authorization": "Basic YWRtaW46cGFzcw=="},
        "empty bearer": {"Authorization": "Bearer "},
    }
    checked = 0
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        for why, headers in bad_headers.items():
            r = client.request(method, _fill(path), headers=headers, json={})
            assert r.status_code == 401, f"{method} {path} with {why} credentials: {r.status_code} {r.text}"
            assert r.headers.get("www-authenticate", "").startswith("Bearer")
            checked += 1
    assert checked >= 30 * len(bad_headers)
    assert client.get("/health").status_code == 200
    # anonymous clients learn nothing from routing or body parsing either
    assert client.get("/no/such/path").status_code == 401
    assert (
        client.post(
            "/api/v1/kbs", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 401
    )
    assert client.get("/no/such/path", headers=bearer(keys["good"])).status_code == 404
    assert client.get("/metrics").status_code == 401  # not public unless configured
    assert client.get("/metrics", headers=bearer(keys["good"])).status_code == 200


def test_openai_routes_answer_401_in_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    r = client.get("/api/v1/deployments")
    assert r.status_code == 401 and r.json()["error"]["code"] == "authentication_failed"


def test_failed_key_use_is_audited_without_the_secret(
    client: TestClient, box: App, keys: dict[str, str]
) -> None:
    client.get("/api/v1/kbs", headers=bearer(keys["wrong"]))
    recs = client.get("/api/v1/audit", params={"action": "auth.key"}, headers=bearer(keys["good"])).json()
    assert recs and recs[0]["outcome"] == "denied"
    assert keys["wrong"] not in str(recs) and keys["good"].split("_")[2] not in str(recs)


def test_projects_are_isolated(client: TestClient, box: App, keys: dict[str, str]) -> None:
    admin = bearer(keys["good"])
    assert client.post("/api/v1/projects", json={"name": "team-b"}, headers=admin).status_code == 201
    r = client.post(
        "/api/v1/users",
        json={"username": "bob", "password": "bob-password-1", "role": "operator", "project": "team-b"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    assert client.post("/api/v1/kbs", json={"name": "secret-kb"}, headers=admin).status_code == 201
    bob = auth.login(box, "bob", "bob-password-1", project="team-b")[2]
    bob_key = apikeys.create_key(box.acting_as(bob), name="bob")["secret"]
    hb = bearer(bob_key)
    assert client.get("/api/v1/kbs", headers=hb).json() == []  # does not list it
    r = client.get("/api/v1/kbs/secret-kb", headers=hb)
    assert r.status_code == 404  # does not reveal it exists
    other = client.get("/api/v1/kbs/no-such-kb", headers=hb)
    assert other.status_code == 404  # the same answer as for a name that exists nowhere
    assert r.json()["error"]["message"].replace("secret-kb", "no-such-kb") == other.json()["error"]["message"]
    assert "secret-kb" not in client.get("/api/v1/kbs/no-such-kb", headers=hb).text
    assert client.post("/api/v1/kbs/secret-kb/search", json={"query": "x"}, headers=hb).status_code == 404
    assert client.get("/api/v1/projects", headers=hb).json()[0]["name"] == "team-b"
    assert len(client.get("/api/v1/projects", headers=hb).json()) == 1
    assert client.get("/api/v1/users", headers=hb).status_code == 403  # operator, not admin
    assert client.get("/api/v1/keys", headers=hb).json()[0]["user"] == "bob"
    assert client.delete(f"/api/v1/keys/{keys['good'][:16]}", headers=hb).status_code == 404
    # the audit log shows bob only his project's records
    recs = client.get("/api/v1/audit", headers=hb)
    assert recs.status_code == 403  # operators cannot read the audit log


def test_roles_and_scopes(client: TestClient, box: App, keys: dict[str, str]) -> None:
    admin = bearer(keys["good"])
    r = client.post(
        "/api/v1/users",
        json={"username": "vera", "password": "vera-password-1", "role": "viewer"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    vera = auth.login(box, "vera", "vera-password-1")[2]
    vk = bearer(apikeys.create_key(box.acting_as(vera))["secret"])
    assert client.get("/api/v1/kbs", headers=vk).status_code == 200
    r = client.post("/api/v1/kbs", json={"name": "nope"}, headers=vk)
    assert r.status_code == 403 and "write" in r.json()["error"]["message"]
    assert client.post("/api/v1/deployments", json={"model": "x"}, headers=vk).status_code == 403
    infer_only = bearer(_key(box, scopes=["infer"])["secret"])
    r = client.get("/api/v1/kbs", headers=infer_only)
    assert r.status_code == 403 and "scopes" in r.json()["error"]["message"]
    bad = client.post("/api/v1/keys", json={"scopes": ["root"]}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["problems"][0]["field"] == "scopes"


def test_login_session_csrf_and_lockout(client: TestClient, box: App) -> None:
    c = TestClient(client.app)  # its own cookie jar; the app is already started
    identity.create_user(box, "carol", "carol-password-1", role="developer")
    r = c.post("/api/v1/auth/login", json={"username": "carol", "password": "carol-password-1"})
    assert r.status_code == 200, r.text
    csrf = r.json()["csrf_token"]
    set_cookie = r.headers["set-cookie"].lower()
    assert c.cookies.get("onebox_session") and "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert c.get("/api/v1/auth/me").json()["username"] == "carol"
    no_csrf = c.post("/api/v1/kbs", json={"name": "c-kb"})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    ok = c.post("/api/v1/kbs", json={"name": "c-kb"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201, ok.text
    assert c.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert c.get("/api/v1/auth/me").status_code == 401
    # wrong passwords: 401 each, then locked (429 + Retry-After) even for the right password
    for _ in range(3):
        r = c.post("/api/v1/auth/login", json={"username": "carol", "password": "wrong-password"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "wrong user name or password"
    r = c.post("/api/v1/auth/login", json={"username": "carol", "password": "carol-password-1"})
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 61
    # an unknown user gets exactly the same answer as a wrong password
    r = c.post("/api/v1/auth/login", json={"username": "nobody", "password": "wrong-password"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "wrong user name or password"
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert auth.login(box, "carol", "carol-password-1", now=later)[2].username == "carol"


def test_bootstrap_never_leaves_a_default_password(tmp_path: Path) -> None:
    app = open_app(Settings(home=tmp_path / "h"))
    try:
        first = identity.bootstrap_admin(app)
        assert first["created"] and len(first["password"]) >= 16
        assert identity.bootstrap_admin(app) == {"created": False}
        principal = auth.login(app, "admin", first["password"])[2]
        assert principal.password_change_required
        with TestClient(create_app(app.settings, supervise=False)) as c:
            token, csrf, _ = auth.login(app, "admin", first["password"])
            c.cookies.set("onebox_session", token)
            h = {"X-CSRF-Token": csrf}
            r = c.get("/api/v1/kbs")
            assert r.status_code == 403 and "change your password" in r.text
            r = c.post("/api/v1/auth/password", json={"new_password": "short"}, headers=h)
            assert r.status_code == 400
            body = {"old_password": first["password"], "new_password": "a-much-better-password"}
            assert c.post("/api/v1/auth/password", json=body, headers=h).status_code == 204
        _, _, p2 = auth.login(app, "admin", "a-much-better-password")
        assert not p2.password_change_required
    finally:
        app.close()


def test_audit_chain_detects_edits_deletions_and_truncation(tmp_path: Path) -> None:
    from sqlalchemy import delete

    from onebox.store.tables import AuditRecord

    app = open_app(Settings(home=tmp_path / "h"))
    try:
        for i in range(6):
            app.audit("test.event", resource_id=str(i), note="审计")
        assert app.audit_log.verify().ok
        with app.db.session() as s:
            s.execute(update(AuditRecord).where(AuditRecord.seq == 2).values(actor="mallory"))
        kinds = {(p.seq, p.kind) for p in app.audit_log.verify().problems}
        assert (2, "edited") in kinds
        with app.db.session() as s:
            s.execute(update(AuditRecord).where(AuditRecord.seq == 2).values(actor=_actor(app)))
            s.execute(delete(AuditRecord).where(AuditRecord.seq == 4))
        report = app.audit_log.verify()
        assert [p.kind for p in report.problems] == ["deleted"]
        with app.db.session() as s:
            s.execute(delete(AuditRecord).where(AuditRecord.seq >= 4))
        assert [p.kind for p in app.audit_log.verify().problems] == ["truncated"]
    finally:
        app.close()


def _actor(app: App) -> str:
    return app.actor().actor
