"""System prompts (each scope, effective list, rendering) and audit events (log, query)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from agentapi_db import UNSET
from agentapi_db.errors import InvalidInput, NotFound, PermissionDenied
from agentapi_db.models import EffectivePrompt
from agentapi_db.prompt_render import compose, render_template
from tests.lib_support import Api, Tenants

pytest_plugins = ("tests.lib_fixtures",)


# --- template rendering (pure) --------------------------------------------------------


def test_render_template_syntax() -> None:
    text = render_template("Hi {{name}}, {{ team }}! {{{{literal}}}} {x} {{ 1bad }}",
                           {"name": "Ann", "team": "core"})
    assert text == "Hi Ann, core! {{literal}} {x} {{ 1bad }}"
    # Values are inserted verbatim, never rendered again.
    assert render_template("{{a}}", {"a": "{{b}}"}) == "{{b}}"


def test_render_template_missing_variable() -> None:
    with pytest.raises(InvalidInput) as info:
        render_template("Hello {{who}}", {})
    assert info.value.rule == "prompt_template_variable" and "who" in str(info.value)


def test_compose_order_and_sources() -> None:
    now = datetime.now(UTC)

    def prompt(precedence: int, content: str, template: str | None = None) -> EffectivePrompt:
        return EffectivePrompt(id=uuid4(), scope="global", organization_id=None, user_id=None,
                               content=content, priority=0, template=template, created_at=now,
                               precedence=precedence)

    prompts = [prompt(2, "second"), prompt(1, "first", "T {{x}}")]
    result = compose(None, prompts, {"x": 1})
    assert result.text == "T 1\n\nsecond" and result.source == "prompts"
    assert result.prompt_ids == [prompts[1].id, prompts[0].id]
    assert compose("override {{x}}", prompts, {}).text == "override {{x}}"
    assert compose(None, [], {}).source == "empty"


# --- prompts through the database ---------------------------------------------------------


def test_create_prompts_per_scope(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        mine = tx.prompts.create("Alice's prompt")
    assert (mine.scope, mine.user_id, mine.organization_id, mine.created_by) == (
        "user", tenants.alice, tenants.org_a, tenants.alice)
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.prompts.create("org prompt by a member", scope="organization")
    with api.app.as_user(tenants.admin_a) as tx:
        org = tx.prompts.create("Org A prompt", scope="organization", priority=5)
    assert org.organization_id == tenants.org_a and org.user_id is None
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.prompts.create("global by an admin", scope="global")
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.admin_a) as tx:
        tx.prompts.create("for alice", user_id=tenants.alice)
    with api.svc.as_service() as tx:
        glob = tx.prompts.create("Global prompt", scope="global")
        for_carol = tx.prompts.create("Carol's", user_id=tenants.carol)
    assert glob.organization_id is None and glob.created_by is None
    assert for_carol.organization_id == tenants.org_b
    with pytest.raises(InvalidInput) as info, api.svc.as_service() as tx:
        tx.prompts.create("bad", scope="global", organization_id=tenants.org_a)
    assert info.value.rule == "system_prompts_scope_consistent"
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.prompts.create("   ")
    assert info.value.rule == "system_prompts_content_not_blank"


def test_update_and_delete_prompts(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        org = tx.prompts.create("Org", scope="organization", template="Hi {{name}}")
    with api.app.as_user(tenants.alice) as tx:
        mine = tx.prompts.create("Mine")
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.prompts.update(org.id, content="member edit")
    with pytest.raises(NotFound), api.app.as_user(tenants.admin_b) as tx:
        tx.prompts.update(org.id, content="cross-tenant edit")
    with pytest.raises(NotFound), api.app.as_user(tenants.bob) as tx:
        tx.prompts.delete(mine.id)
    with api.app.as_user(tenants.admin_a) as tx:
        changed = tx.prompts.update(org.id, priority=9, enabled=False)
        assert (changed.priority, changed.enabled, changed.template) == (9, False, "Hi {{name}}")
        cleared = tx.prompts.update(org.id, template=None)
        assert cleared.template is None and cleared.content == "Org"
        kept = tx.prompts.update(org.id, template=UNSET, content="Org v2")
        assert kept.content == "Org v2"
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.prompts.delete(org.id)
    with api.app.as_user(tenants.alice) as tx:
        tx.prompts.delete(mine.id)
        assert [p.id for p in tx.prompts.list()] == [org.id]
        assert tx.prompts.get(org.id).content == "Org v2"


def _layered(api: Api, tenants: Tenants) -> dict[str, UUID]:
    with api.svc.as_service() as tx:
        g = tx.prompts.create("Global.", scope="global").id
        tx.prompts.create("Disabled global.", scope="global", enabled=False)
        tx.prompts.create("Org B only.", scope="organization", organization_id=tenants.org_b)
    with api.app.as_user(tenants.admin_a) as tx:
        o_low = tx.prompts.create("Org low.", scope="organization", priority=1).id
        o_high = tx.prompts.create("Org high.", scope="organization", priority=10,
                                   template="You work for {{org}}.").id
    with api.app.as_user(tenants.alice) as tx:
        u = tx.prompts.create("Alice.", template="Call me {{ name }}.").id
    with api.app.as_user(tenants.bob) as tx:
        tx.prompts.create("Bob.")
    return {"g": g, "o_low": o_low, "o_high": o_high, "u": u}


def test_list_effective_prompts(api: Api, tenants: Tenants) -> None:
    ids = _layered(api, tenants)
    with api.app.as_user(tenants.alice) as tx:
        eff = tx.prompts.list_effective()
    assert [p.id for p in eff] == [ids["u"], ids["o_high"], ids["o_low"], ids["g"]]
    assert [p.precedence for p in eff] == [1, 2, 3, 4]
    with api.app.as_user(tenants.carol) as tx:
        assert [p.content for p in tx.prompts.list_effective()] == ["Org B only.", "Global."]
    with api.app.as_user(tenants.alice) as tx:
        # Another tenant's user: nothing, whoever asks.
        assert tx.prompts.list_effective(user_id=tenants.carol) == []


def test_render(api: Api, tenants: Tenants) -> None:
    _layered(api, tenants)
    with api.app.as_user(tenants.alice) as tx:
        rendered = tx.prompts.render(variables={"name": "Al", "org": "Org A"})
        assert rendered.text == "Call me Al.\n\nYou work for Org A.\n\nOrg low.\n\nGlobal."
        assert rendered.source == "prompts" and len(rendered.prompt_ids) == 4
        with pytest.raises(InvalidInput) as info:
            tx.prompts.render(variables={"name": "Al"})
        assert info.value.rule == "prompt_template_variable" and "org" in str(info.value)
        session = tx.sessions.create(workspace_path="/w", system_prompt="Session override.")
        plain = tx.sessions.create(workspace_path="/p")
        over = tx.prompts.render(session_id=session.id)
        assert (over.text, over.source) == ("Session override.", "session")
        layered = tx.prompts.render(session_id=plain.id, variables={"name": "A", "org": "O"})
        assert layered.source == "prompts"
    with api.app.as_user(tenants.carol) as tx:
        assert tx.prompts.render().text == "Org B only.\n\nGlobal."
        with pytest.raises(NotFound):
            tx.prompts.render(session_id=session.id)
    with api.svc.as_service() as tx:
        assert tx.prompts.render(session_id=session.id).text == "Session override."
        for_bob = tx.prompts.render(user_id=tenants.bob, variables={"org": "A"})
        assert for_bob.text.startswith("Bob.\n\nYou work for A.")


# --- audit ----------------------------------------------------------------------------


def test_log_and_query_as_user(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.alice) as tx:
        event_id = tx.audit.log("session.create", "session", resource_id=uuid4(),
                                details={"path": "/w"}, ip_address="10.0.0.1",
                                user_agent="pytest")
        page = tx.audit.query()
    assert [e.id for e in page.items] == [event_id]
    event = page.items[0]
    assert (event.user_id, event.organization_id, event.ip_address, event.details) == (
        tenants.alice, tenants.org_a, "10.0.0.1", {"path": "/w"})
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.audit.log("impersonate", "user", user_id=tenants.bob)
    with pytest.raises(PermissionDenied), api.app.as_user(tenants.alice) as tx:
        tx.audit.log("cross", "org", organization_id=tenants.org_b)
    with pytest.raises(InvalidInput) as info, api.app.as_user(tenants.alice) as tx:
        tx.audit.log(" ", "x")
    assert info.value.rule == "audit_logs_action_not_blank"
    with pytest.raises(InvalidInput), api.app.as_user(tenants.alice) as tx:
        tx.audit.log("x", "y", ip_address="not-an-ip")


def test_audit_visibility(api: Api, tenants: Tenants) -> None:
    for who in (tenants.alice, tenants.bob, tenants.admin_a, tenants.carol):
        with api.app.as_user(who) as tx:
            tx.audit.log("login", "user")
    with api.svc.as_service() as tx:
        tx.audit.log("provision", "organization", organization_id=tenants.org_a)
    with api.app.as_user(tenants.bob) as tx:
        assert [e.user_id for e in tx.audit.query().items] == [tenants.bob]
    with api.app.as_user(tenants.admin_a) as tx:
        org_a = tx.audit.query().items
    assert len(org_a) == 4 and {e.organization_id for e in org_a} == {tenants.org_a}
    with api.app.as_user(tenants.admin_b) as tx:
        assert [e.user_id for e in tx.audit.query().items] == [tenants.carol]
    with api.svc.as_service() as tx:
        assert len(tx.audit.query().items) == 5
        assert len(tx.audit.query(organization_id=tenants.org_b).items) == 1


def test_audit_filters_and_keyset_pagination(api: Api, tenants: Tenants) -> None:
    with api.app.as_user(tenants.admin_a) as tx:
        for i in range(5):
            tx.audit.log("mcp.update", "mcp_configuration", resource_id=str(i))
        tx.audit.log("login", "user", success=False, error_message="bad password")
    with api.app.as_user(tenants.alice) as tx:
        tx.audit.log("mcp.update", "mcp_configuration")
    with api.app.as_user(tenants.admin_a) as tx:
        ids: list[UUID] = []
        cursor: str | None = None
        while True:
            page = tx.audit.query(action="mcp.update", limit=2, cursor=cursor)
            ids.extend(e.id for e in page.items)
            if (cursor := page.next_cursor) is None:
                break
        assert len(ids) == 6 and len(set(ids)) == 6
        full = tx.audit.query(action="mcp.update", limit=100).items
        assert [e.id for e in full] == ids
        keys = [(e.timestamp, e.id) for e in full]
        assert keys == sorted(keys, reverse=True)
        assert len(tx.audit.query(user_id=tenants.alice).items) == 1
        failed = tx.audit.query(resource_type="user").items
        assert [(e.success, e.error_message) for e in failed] == [(False, "bad password")]
        now = datetime.now(UTC)
        assert tx.audit.query(since=now + timedelta(minutes=1)).items == []
        assert tx.audit.query(until=now - timedelta(minutes=1)).items == []
        assert len(tx.audit.query(since=now - timedelta(minutes=5)).items) == 7
        with pytest.raises(InvalidInput):
            tx.audit.query(since=datetime(2026, 1, 1))  # naive datetime
        with pytest.raises(InvalidInput):
            tx.audit.query(cursor="%%%")


def test_prompt_reads_refused_outside_own_scope(api: Api, tenants: Tenants) -> None:
    ids = _layered(api, tenants)
    with api.app.as_user(tenants.bob) as tx:
        with pytest.raises(NotFound):
            tx.prompts.get(ids["u"])  # Alice's own prompt
        assert ids["u"] not in {p.id for p in tx.prompts.list()}
        assert tx.prompts.get(ids["o_high"]).scope == "organization"
    with api.app.as_user(tenants.carol) as tx:
        with pytest.raises(NotFound):
            tx.prompts.get(ids["o_low"])
        assert {p.scope for p in tx.prompts.list()} == {"global", "organization"}
        assert tx.prompts.list(organization_id=tenants.org_a) == []
    with api.svc.as_service() as tx:
        assert len(tx.prompts.list(scope="global")) == 2
