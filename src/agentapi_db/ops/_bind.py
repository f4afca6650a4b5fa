"""Turn each operation (a generator function) into a sync method and an async method.

``sync_op(fn)`` gives ``def method(self, *args, **kwargs) -> T`` that runs the
operation on the transaction's sync executor; ``async_op(fn)`` gives
``async def method(...) -> T`` for the async executor. ``ParamSpec`` carries the
operation's exact signature over, so ``mypy --strict`` checks calls of both APIs
against the one definition, and the repository classes below are only a table
of which operation appears under which name.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from agentapi_db.ops import audit, mcp, organizations, prompts, sessions, tokens, users
from agentapi_db.ops._core import OpContext, Query

P = ParamSpec("P")
T = TypeVar("T")

OpFunction = Callable[Concatenate[OpContext, P], Generator[Query, Any, T]]


class SyncRunner(Protocol):
    @property
    def context(self) -> OpContext: ...

    def run(self, op: Generator[Query, Any, T]) -> T: ...


class AsyncRunner(Protocol):
    @property
    def context(self) -> OpContext: ...

    async def run(self, op: Generator[Query, Any, T]) -> T: ...


class SyncRepo:
    """Base of the sync repositories: holds the transaction that runs the operations."""

    __slots__ = ("_tx",)

    def __init__(self, tx: SyncRunner) -> None:
        self._tx = tx


class AsyncRepo:
    """Base of the async repositories."""

    __slots__ = ("_tx",)

    def __init__(self, tx: AsyncRunner) -> None:
        self._tx = tx


def _copy_meta(target: Callable[..., Any], fn: Callable[..., Any]) -> None:
    target.__name__ = fn.__name__
    target.__qualname__ = fn.__qualname__
    target.__doc__ = fn.__doc__
    target.__module__ = fn.__module__


def sync_op(fn: OpFunction[P, T]) -> Callable[Concatenate[SyncRepo, P], T]:
    def method(self: SyncRepo, /, *args: P.args, **kwargs: P.kwargs) -> T:
        tx = self._tx
        return tx.run(fn(tx.context, *args, **kwargs))

    _copy_meta(method, fn)
    return method


def async_op(fn: OpFunction[P, T]) -> Callable[Concatenate[AsyncRepo, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncRepo, /, *args: P.args, **kwargs: P.kwargs) -> T:
        tx = self._tx
        return await tx.run(fn(tx.context, *args, **kwargs))

    _copy_meta(method, fn)
    return method


# --- sync -------------------------------------------------------------------------


class Organizations(SyncRepo):
    provision = sync_op(organizations.provision)
    get = sync_op(organizations.get)
    get_by_slug = sync_op(organizations.get_by_slug)
    list = sync_op(organizations.list_all)
    update = sync_op(organizations.update)
    delete = sync_op(organizations.delete)


class Users(SyncRepo):
    add = sync_op(users.add)
    get = sync_op(users.get)
    get_by_email = sync_op(users.get_by_email)
    list = sync_op(users.list_users)
    change_role = sync_op(users.change_role)
    deactivate = sync_op(users.deactivate)
    activate = sync_op(users.activate)
    update_profile = sync_op(users.update_profile)
    delete = sync_op(users.delete)


class Sessions(SyncRepo):
    create = sync_op(sessions.create)
    get = sync_op(sessions.get)
    touch = sync_op(sessions.touch)
    set_system_prompt = sync_op(sessions.set_system_prompt)
    list_active = sync_op(sessions.list_active)
    revoke = sync_op(sessions.revoke)
    cleanup_expired = sync_op(sessions.cleanup_expired)


class McpConfigurations(SyncRepo):
    create = sync_op(mcp.create)
    update = sync_op(mcp.update)
    get = sync_op(mcp.get)
    get_secret = sync_op(mcp.get_secret)
    get_env = sync_op(mcp.get_env)
    list = sync_op(mcp.list_configs)
    list_effective = sync_op(mcp.list_effective)
    delete = sync_op(mcp.delete)


class OAuthTokens(SyncRepo):
    store = sync_op(tokens.store)
    get = sync_op(tokens.get)
    list = sync_op(tokens.list_tokens)
    delete = sync_op(tokens.delete)


class Prompts(SyncRepo):
    create = sync_op(prompts.create)
    get = sync_op(prompts.get)
    list = sync_op(prompts.list_prompts)
    update = sync_op(prompts.update)
    delete = sync_op(prompts.delete)
    list_effective = sync_op(prompts.list_effective)
    render = sync_op(prompts.render)


class Audit(SyncRepo):
    log = sync_op(audit.log)
    query = sync_op(audit.query)


# --- async ------------------------------------------------------------------------


class AsyncOrganizations(AsyncRepo):
    provision = async_op(organizations.provision)
    get = async_op(organizations.get)
    get_by_slug = async_op(organizations.get_by_slug)
    list = async_op(organizations.list_all)
    update = async_op(organizations.update)
    delete = async_op(organizations.delete)


class AsyncUsers(AsyncRepo):
    add = async_op(users.add)
    get = async_op(users.get)
    get_by_email = async_op(users.get_by_email)
    list = async_op(users.list_users)
    change_role = async_op(users.change_role)
    deactivate = async_op(users.deactivate)
    activate = async_op(users.activate)
    update_profile = async_op(users.update_profile)
    delete = async_op(users.delete)


class AsyncSessions(AsyncRepo):
    create = async_op(sessions.create)
    get = async_op(sessions.get)
    touch = async_op(sessions.touch)
    set_system_prompt = async_op(sessions.set_system_prompt)
    list_active = async_op(sessions.list_active)
    revoke = async_op(sessions.revoke)
    cleanup_expired = async_op(sessions.cleanup_expired)


class AsyncMcpConfigurations(AsyncRepo):
    create = async_op(mcp.create)
    update = async_op(mcp.update)
    get = async_op(mcp.get)
    get_secret = async_op(mcp.get_secret)
    get_env = async_op(mcp.get_env)
    list = async_op(mcp.list_configs)
    list_effective = async_op(mcp.list_effective)
    delete = async_op(mcp.delete)


class AsyncOAuthTokens(AsyncRepo):
    store = async_op(tokens.store)
    get = async_op(tokens.get)
    list = async_op(tokens.list_tokens)
    delete = async_op(tokens.delete)


class AsyncPrompts(AsyncRepo):
    create = async_op(prompts.create)
    get = async_op(prompts.get)
    list = async_op(prompts.list_prompts)
    update = async_op(prompts.update)
    delete = async_op(prompts.delete)
    list_effective = async_op(prompts.list_effective)
    render = async_op(prompts.render)


class AsyncAudit(AsyncRepo):
    log = async_op(audit.log)
    query = async_op(audit.query)
