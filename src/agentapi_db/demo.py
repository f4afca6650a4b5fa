"""``agentapi-db up --demo``: two demo organizations and a walkthrough of their isolation.

:func:`load_demo` seeds, through the library as ``agentapi_service`` and in one
transaction, two organizations (``acme``, ``globex``) with admins and members,
sessions, MCP configurations (org-wide and personal, bearer tokens encrypted with
a demo key), prompts in every scope and audit events. It does nothing when
``acme`` already exists, so running it twice is harmless.

The demo key is generated once and kept in ``<data dir>/demo-encryption.key``
(mode 0600, next to the cluster it encrypts for); it is never printed. Point
``AGENTAPI_ENCRYPTION_KEY_FILE`` at it to read the demo tokens from your own code.

:func:`walkthrough` then runs REAL queries through the library, as users of each
organization, and checks every outcome: a step whose outcome differs from what
row-level security promises is reported as a failure (and ``up --demo`` exits 1).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from agentapi_db.context import load_context_key
from agentapi_db.db import Database, Transaction
from agentapi_db.errors import AgentApiDbError, NotFound, PermissionDenied
from agentapi_db.keys import EncryptionKey
from agentapi_db.local import local_cluster, local_context_key
from agentapi_db.models import UserRole

__all__ = [
    "DemoFailed",
    "DemoStep",
    "Walkthrough",
    "demo_key",
    "load_demo",
    "run_demo",
    "walkthrough",
]

KEY_FILE = "demo-encryption.key"

# The one statement of its own: everything else goes through the library.
_SQL_COUNT_ORGS = "SELECT count(*) FROM public.organizations"

ORGS: dict[str, tuple[str, list[tuple[str, UserRole]]]] = {
    # slug: (name, [(email, role), ...]); the first one is the org's first admin
    "acme": (
        "Acme Robotics",
        [("alice@acme.test", "admin"), ("carol@acme.test", "user"), ("dave@acme.test", "user")],
    ),
    "globex": ("Globex Corporation", [("bob@globex.test", "admin"), ("erin@globex.test", "user")]),
}
# (email, workspace) per session
SESSIONS = [
    ("alice@acme.test", "/workspaces/acme/robot-firmware"),
    ("carol@acme.test", "/workspaces/acme/vision"),
    ("carol@acme.test", "/workspaces/acme/vision-experiments"),
    ("bob@globex.test", "/workspaces/globex/billing"),
    ("erin@globex.test", "/workspaces/globex/reports"),
]
GLOBAL_PROMPT = "You are AgentAPI, a careful coding agent. Never reveal secrets."
ORG_PROMPTS = {
    "acme": "Acme code follows the Robotics Safety Guide; cite it for motor control changes.",
    "globex": "Globex: every change to billing needs a ticket number in the commit message.",
}
CAROL_TEMPLATE = "Address the user as {{name}}; they work on {{project}}."


def demo_key(data_dir: Path | None = None) -> EncryptionKey:
    """The demo encryption key: read from the data dir, or generated and saved (0600)."""
    directory = data_dir if data_dir is not None else local_cluster().data_dir
    path = directory / KEY_FILE
    try:
        return EncryptionKey.parse(path.read_text(encoding="utf-8"), source=f"key file {path}")
    except FileNotFoundError:
        pass
    key = EncryptionKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key.reveal() + "\n")
    return key


def _seeded(tx: Transaction) -> bool:
    """Whether the demo organizations exist; an ``acme``/``globex`` that is not demo data
    is an error (the walkthrough's expectations would not hold)."""
    found = 0
    for slug in ORGS:
        try:
            org = tx.organizations.get_by_slug(slug)
        except NotFound:
            continue
        if org.metadata.get("demo") is not True:
            raise DemoFailed(
                f"an organization {slug!r} exists that is not demo data; run the demo on a "
                "fresh database (`agentapi-db down --purge`, then `agentapi-db up --demo`)"
            )
        found += 1
    return found == len(ORGS)


def load_demo(db: Database) -> bool:
    """Seed the demo data (one transaction, as the service); False when already there."""
    with db.as_service() as tx:
        if _seeded(tx):
            return False
        users: dict[str, UUID] = {}
        orgs: dict[str, UUID] = {}
        for slug, (name, people) in ORGS.items():
            (first_email, _), *others = people
            org, admin = tx.organizations.provision(
                name=name, slug=slug, admin_email=first_email, metadata={"demo": True}
            )
            orgs[slug] = org.id
            users[first_email] = admin.id
            for email, role in others:
                users[email] = tx.users.add(email, role=role, organization_id=org.id).id
        for email, workspace in SESSIONS:
            tx.sessions.create(
                workspace_path=workspace, ttl=timedelta(days=365), user_id=users[email]
            )
        tx.mcp.create(
            name="github",
            type="http",
            endpoint="https://mcp.github.example/acme",
            auth_type="bearer",
            bearer_token="ghp_demo_acme_0123456789",  # noqa: S106 - demo data, encrypted on write
            scope="organization",
            organization_id=orgs["acme"],
        )
        tx.mcp.create(
            name="notes",
            type="stdio",
            command="notes-mcp",
            args=["--readonly"],
            user_id=users["carol@acme.test"],
        )
        tx.mcp.create(
            name="jira",
            type="sse",
            endpoint="https://mcp.jira.example/globex",
            auth_type="bearer",
            bearer_token="jira_demo_globex_9876543210",  # noqa: S106 - demo data
            scope="organization",
            organization_id=orgs["globex"],
        )
        tx.prompts.create(GLOBAL_PROMPT, scope="global", priority=0)
        for slug, text in ORG_PROMPTS.items():
            tx.prompts.create(text, scope="organization", organization_id=orgs[slug], priority=10)
        tx.prompts.create(
            "Personal style for Carol.",
            scope="user",
            user_id=users["carol@acme.test"],
            template=CAROL_TEMPLATE,
            priority=5,
        )
        for email, uid in users.items():
            slug = email.rsplit("@", 1)[1].split(".", 1)[0]
            tx.audit.log(
                "user.login",
                "user",
                resource_id=uid,
                details={"demo": True},
                user_id=uid,
                organization_id=orgs[slug],
            )
    return True


@dataclass(frozen=True)
class DemoStep:
    """One line of the walkthrough: who did what, what happened, whether RLS held."""

    actor: str
    action: str
    outcome: str
    ok: bool

    def as_dict(self) -> dict[str, object]:
        return {"actor": self.actor, "action": self.action, "outcome": self.outcome, "ok": self.ok}


def _ids(db: Database) -> tuple[dict[str, UUID], dict[str, UUID]]:
    """Demo users and organizations by email / slug (looked up as the service)."""
    users: dict[str, UUID] = {}
    orgs: dict[str, UUID] = {}
    with db.as_service() as tx:
        for slug, (_, people) in ORGS.items():
            org_id = tx.organizations.get_by_slug(slug).id
            orgs[slug] = org_id
            for email, _role in people:
                users[email] = tx.users.get_by_email(email, organization_id=org_id).id
    return users, orgs


def _expect_error(run: Callable[[], object], error: type[AgentApiDbError]) -> tuple[bool, str]:
    try:
        run()
    except error as exc:
        text = str(exc).removeprefix("permission denied: ")
        return True, f"{type(exc).__name__}: {text}"
    except AgentApiDbError as exc:
        return False, f"unexpected {type(exc).__name__}: {exc}"
    return False, "it succeeded: isolation is broken"


@dataclass(frozen=True)
class Walkthrough:
    steps: list[DemoStep]
    users: dict[str, UUID]
    rendered_prompt: str


def walkthrough(db: Database) -> Walkthrough:
    """Run the isolation walkthrough's queries and check each outcome."""
    users, _orgs = _ids(db)
    alice, carol = users["alice@acme.test"], users["carol@acme.test"]
    bob = users["bob@globex.test"]
    steps: list[DemoStep] = []

    def sessions_of(uid: UUID) -> list[str]:
        with db.as_user(uid) as tx:
            return [s.organization_slug for s in tx.sessions.list_active(limit=100).items]

    for email, uid, want, org in (
        ("alice@acme (admin)", alice, 3, "acme"),
        ("carol@acme (member)", carol, 2, "acme"),
        ("bob@globex (admin)", bob, 2, "globex"),
    ):
        seen = sessions_of(uid)
        steps.append(
            DemoStep(
                email,
                "list active sessions",
                f"sees {len(seen)} session(s), all of {org}",
                len(seen) == want and set(seen) == {org},
            )
        )

    with db.as_user(bob) as tx:
        globex_session = tx.sessions.list_active(limit=1).items[0].id

    def alice_reads_globex() -> object:
        with db.as_user(alice) as tx:
            return tx.sessions.get(globex_session)

    ok, outcome = _expect_error(alice_reads_globex, NotFound)
    steps.append(DemoStep("alice@acme (admin)", "read a globex session by its id", outcome, ok))

    def carol_creates_org_config() -> object:
        with db.as_user(carol) as tx:
            return tx.mcp.create(
                name="shadow-it",
                type="http",
                endpoint="https://example.test",
                scope="organization",
            )

    ok, outcome = _expect_error(carol_creates_org_config, PermissionDenied)
    steps.append(DemoStep("carol@acme (member)", "create an org-wide MCP config", outcome, ok))

    with db.as_user(alice) as tx:
        configs = tx.mcp.list_effective(decrypt=True)
    names = sorted(c.name for c in configs)
    github = next((c for c in configs if c.name == "github"), None)
    secret = github.bearer_token.get_secret_value() if github and github.bearer_token else ""
    steps.append(
        DemoStep(
            "alice@acme (admin)",
            "list effective MCP configs, decrypting tokens",
            f"{', '.join(names)}; github token decrypts ({secret[:4]}…, {len(secret)} chars)",
            names == ["github"] and secret.startswith("ghp_"),
        )
    )
    with db.as_user(carol) as tx:
        carol_configs = sorted(c.name for c in tx.mcp.list_effective())
    steps.append(
        DemoStep(
            "carol@acme (member)",
            "list effective MCP configs",
            ", ".join(carol_configs),
            carol_configs == ["github", "notes"],
        )
    )

    with db.as_user(carol) as tx:
        rendered = tx.prompts.render(variables={"name": "Carol", "project": "vision"})
    parts = rendered.text.split("\n\n")
    steps.append(
        DemoStep(
            "carol@acme (member)",
            "render the effective system prompt",
            f"{len(parts)} parts: user, organization, global (below)",
            len(parts) == 3
            and "Carol" in parts[0]
            and "Acme" in parts[1]
            and parts[2] == GLOBAL_PROMPT,
        )
    )

    with db.as_user(bob) as tx:
        events = tx.audit.query(limit=100).items
        orgs_seen = {e.organization_id for e in events}
        bob_org = tx.organizations.get().id
    steps.append(
        DemoStep(
            "bob@globex (admin)",
            "query the audit log",
            f"{len(events)} event(s), all of globex",
            bool(events) and orgs_seen == {bob_org},
        )
    )

    try:
        with db.transaction() as tx:
            row = tx.connection.execute(_SQL_COUNT_ORGS).fetchone()
            count = None if row is None else int(row[0])
        outcome, ok = f"sees {count} organization(s)", count == 0
    except PermissionDenied as exc:
        # A NOINHERIT login (like the local one) has no rights of its own at all.
        outcome, ok = "refused: " + str(exc).removeprefix("permission denied: "), True
    steps.append(
        DemoStep("no context", "count organizations outside as_user()/as_service()", outcome, ok)
    )
    return Walkthrough(steps=steps, users=users, rendered_prompt=rendered.text)


def run_demo(url: str, *, json_output: bool = False, console: Console | None = None) -> None:
    """Load the demo data into the database at ``url`` and print the walkthrough.

    Raises :class:`DemoFailed` when a step's outcome is not the expected one.
    """
    out = console or Console(highlight=False)
    key = demo_key()
    context_key = load_context_key() or local_context_key()
    with Database(url, key=key, context_key=context_key, min_size=1, max_size=2) as db:
        loaded = load_demo(db)
        result = walkthrough(db)
    steps = result.steps
    failed = [s for s in steps if not s.ok]
    if json_output:
        document = {
            "loaded": loaded,
            "users": {email: str(uid) for email, uid in result.users.items()},
            "steps": [s.as_dict() for s in steps],
            "rendered_prompt": result.rendered_prompt,
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        out.print(
            "[green]✓[/] demo data loaded: acme (alice admin, carol, dave) and globex "
            "(bob admin, erin)"
            if loaded
            else "[green]✓[/] demo data already loaded"
        )
        table = Table(title="Tenant isolation, with real queries through agentapi_db")
        table.add_column("", width=1)
        table.add_column("acting as")
        table.add_column("does")
        table.add_column("result")
        for step in steps:
            table.add_row(
                "[green]✓[/]" if step.ok else "[red]✗[/]",
                escape(step.actor),
                escape(step.action),
                escape(step.outcome),
            )
        out.print(table)
        out.print(
            Panel(
                escape(result.rendered_prompt),
                title="carol@acme's system prompt (user + organization + global)",
                expand=False,
            )
        )
        carol = result.users["carol@acme.test"]
        out.print("Try:", soft_wrap=True)
        for command in (
            "agentapi-db status",
            "agentapi-db audit tail --org globex",
            f"agentapi-db prompts show --user {carol} --var name=Carol --var project=vision",
        ):
            out.print(f"  [bold]{escape(command)}[/]", soft_wrap=True)
    if failed:
        raise DemoFailed(f"{len(failed)} walkthrough step(s) did not behave as expected")


class DemoFailed(AgentApiDbError):
    """A walkthrough step's outcome contradicts the isolation the schema promises."""
