"""The per-organization audit hash chain: enrol, and verify (``agentapi-db audit verify-chain``).

The schema (section 12.2 of ``schema.sql``) links every audit event of an enrolled
organization: ``chain_seq`` counts 1, 2, ... and
``chain_hash = sha256(previous chain_hash || audit_chain_event_text(event))``,
starting from a genesis hash bound to the organization.

:func:`verify_chain` reads the head and the events in chain order in one
read-only snapshot, recomputes every hash here in Python (``hashlib``) from the
canonical text, and reports the **first** broken link:

* ``hash``: the event's content (or its stored hash) differs from what was chained;
* ``gap``: chain positions are missing (an event was deleted);
* ``duplicate``: a chain position appears twice;
* ``tail``: the last event is not the chain head (events at the end are missing);
* ``unchained``: an event written after enrolment carries no chain position (it
  was inserted with the chain trigger disabled);
* ``trigger``: the chain triggers are missing or disabled.

Events that retention dropped are accounted for by the head's base
(``base_seq``/``base_hash``): verification starts after it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final, LiteralString
from uuid import UUID

from agentapi_db.errors import NotFound
from agentapi_db.opsdb import Conn, service_transaction

__all__ = [
    "BrokenLink",
    "ChainReport",
    "enable_chain",
    "enrolled_organizations",
    "organization_id_for_slug",
    "verify_chain",
]

# --------------------------------------------------------------------------- SQL

_SQL_ORG_BY_SLUG: Final[LiteralString] = (
    "SELECT id FROM public.organizations WHERE lower(slug) = %s"
)
_SQL_ENABLE: Final[LiteralString] = "SELECT public.audit_chain_enable(%s)"
_SQL_ENROLLED: Final[LiteralString] = """
SELECT h.organization_id, o.slug
  FROM public.audit_chain_heads AS h
  LEFT JOIN public.organizations AS o ON o.id = h.organization_id
 ORDER BY o.slug NULLS LAST, h.organization_id
"""
_SQL_HEAD: Final[LiteralString] = """
SELECT base_seq, base_hash, last_seq, last_hash, enabled_at
  FROM public.audit_chain_heads
 WHERE organization_id = %s
"""
# An enrolled organization's event stamped after enrolment (plus a margin for
# transactions that were in flight while it committed) must be chained; one that
# is not was written with the chain trigger off.
_SQL_UNCHAINED: Final[LiteralString] = """
SELECT a.id, a."timestamp"
  FROM public.audit_logs AS a
 WHERE a.organization_id = %s AND a.chain_seq IS NULL
   AND a."timestamp" > %s::timestamptz + interval '1 second'
 ORDER BY a."timestamp", a.id
 LIMIT 1
"""
_SQL_TRIGGERS: Final[LiteralString] = """
SELECT count(*) FROM pg_catalog.pg_trigger AS t
 WHERE t.tgrelid = 'public.audit_logs'::pg_catalog.regclass
   AND t.tgname IN ('audit_logs_chain', 'audit_logs_chain_advance')
   AND t.tgenabled <> 'D'
"""
_SQL_SKIPPED: Final[LiteralString] = """
SELECT count(*) FROM public.audit_logs
 WHERE organization_id = %s AND chain_seq IS NOT NULL AND chain_seq <= %s
"""
_SQL_EVENTS: Final[LiteralString] = """
SELECT a.chain_seq, a.id, a."timestamp", a.chain_hash,
       public.audit_chain_event_text(a.chain_seq, a.id, a."timestamp", a.user_id,
           a.organization_id, a.action, a.resource_type, a.resource_id, a.details,
           a.ip_address, a.user_agent, a.success, a.error_message)
  FROM public.audit_logs AS a
 WHERE a.organization_id = %s AND a.chain_seq > %s
 ORDER BY a.chain_seq, a.id
"""

# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class BrokenLink:
    """The first place where the chain does not hold."""

    kind: str  # "hash", "gap", "duplicate", "tail", "unchained" or "trigger"
    chain_seq: int
    event_id: UUID | None
    timestamp: datetime | None
    detail: str


@dataclass(frozen=True)
class ChainReport:
    """Result of verifying one organization's chain."""

    organization_id: UUID
    slug: str | None
    events_checked: int
    skipped_before_base: int
    base_seq: int
    last_seq: int
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def organization_id_for_slug(conn: Conn, slug: str) -> UUID:
    """The id of the organization ``slug``; :class:`NotFound` if there is none."""
    with service_transaction(conn):
        row = conn.execute(_SQL_ORG_BY_SLUG, (slug,)).fetchone()
    if row is None:
        raise NotFound(f"no organization with slug {slug!r}")
    org_id: UUID = row[0]
    return org_id


def enable_chain(conn: Conn, organization_id: UUID) -> bool:
    """Enrol the organization in the hash chain; False if it already was."""
    with service_transaction(conn):
        row = conn.execute(_SQL_ENABLE, (organization_id,)).fetchone()
    return bool(row and row[0])


def enrolled_organizations(conn: Conn) -> list[tuple[UUID, str | None]]:
    """(organization id, slug) of every enrolled organization."""
    with service_transaction(conn):
        return [(r[0], r[1]) for r in conn.execute(_SQL_ENROLLED)]


def _link(prev: bytes, text: str) -> bytes:
    return hashlib.sha256(prev + text.encode("utf-8")).digest()


def verify_chain(conn: Conn, organization_id: UUID, slug: str | None = None) -> ChainReport:
    """Recompute the organization's chain; report the first broken link (None if intact)."""
    with service_transaction(conn, snapshot=True):
        head = conn.execute(_SQL_HEAD, (organization_id,)).fetchone()
        if head is None:
            raise NotFound(f"organization {slug or organization_id} is not enrolled in the chain")
        base_seq, base_hash, last_seq, last_hash, enabled_at = (
            int(head[0]),
            bytes(head[1]),
            int(head[2]),
            bytes(head[3]),
            head[4],
        )
        unchained = conn.execute(_SQL_UNCHAINED, (organization_id, enabled_at)).fetchone()
        triggers_row = conn.execute(_SQL_TRIGGERS).fetchone()
        triggers = int(triggers_row[0]) if triggers_row else 0
        skipped_row = conn.execute(_SQL_SKIPPED, (organization_id, base_seq)).fetchone()
        skipped = int(skipped_row[0]) if skipped_row else 0
        prev_seq, prev_hash = base_seq, base_hash
        checked = 0
        broken: BrokenLink | None = None
        with conn.cursor(name="agentapi_chain_verify") as cur:
            cur.itersize = 2000
            cur.execute(_SQL_EVENTS, (organization_id, base_seq))
            for seq, event_id, ts, stored, text in cur:
                seq = int(seq)
                if seq == prev_seq:
                    broken = BrokenLink(
                        "duplicate", seq, event_id, ts, f"chain position {seq} appears twice"
                    )
                    break
                if seq != prev_seq + 1:
                    missing = (
                        f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
                    )
                    broken = BrokenLink(
                        "gap", seq, event_id, ts,
                        f"events at chain position {missing} are missing before this one",
                    )
                    break
                expected = _link(prev_hash, str(text))
                if stored is None or bytes(stored) != expected:
                    broken = BrokenLink(
                        "hash", seq, event_id, ts,
                        "the event does not match its chain hash (its content or hash changed)",
                    )
                    break
                prev_seq, prev_hash = seq, expected
                checked += 1
    if broken is None and triggers < 2:
        broken = BrokenLink(
            "trigger", 0, None, None,
            "the chain triggers on audit_logs are missing or disabled: new events are not "
            "chained (`agentapi-db audit enable-chain` puts them back)",
        )
    if broken is None and unchained is not None:
        broken = BrokenLink(
            "unchained", 0, unchained[0], unchained[1],
            "an event written after enrolment has no chain position (chain trigger bypassed)",
        )
    if broken is None and (prev_seq != last_seq or prev_hash != last_hash):
        broken = BrokenLink(
            "tail", prev_seq + 1, None, None,
            f"the chain ends at position {prev_seq} but its head is at {last_seq}: "
            "events at the end are missing",
        )
    return ChainReport(
        organization_id=organization_id,
        slug=slug,
        events_checked=checked,
        skipped_before_base=skipped,
        base_seq=base_seq,
        last_seq=last_seq,
        broken=broken,
    )
