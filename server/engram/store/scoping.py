"""Organization scoping that no query can forget.

A session is opened for one organization (or, for system work such as key
rotation, explicitly for all of them).  Two listeners enforce it:

* every ORM ``SELECT``, ``UPDATE`` and ``DELETE`` gets the criterion
  ``organization_id = <scope>`` on every organization-owned entity it touches,
  joined and aliased ones included (``with_loader_criteria``);
* every flushed row of an organization-owned model must belong to the scope
  (it is filled in when left empty).

A query on organization-owned models from a session with no scope raises
:class:`OrganizationScopeError` instead of silently reading every tenant.
Queries must therefore go through ORM entities; Core statements on bare
``Table`` objects are not filtered and are reserved for system maintenance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import BindParameter, Executable, Table, Update, bindparam, event, update
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction, with_loader_criteria

from engram.store.errors import OrganizationScopeError
from engram.store.models.base import OrganizationScoped

StatementT = TypeVar("StatementT", bound=Executable)

ORGANIZATION_KEY = "engram_organization_id"
ALL_ORGANIZATIONS_KEY = "engram_all_organizations"
READ_ONLY_KEY = "engram_read_only"


# The organization travels as an ordinary execution parameter of this name,
# so that the criteria option below is one constant object: a per-call option
# (a lambda closing over the organization id) made SQLAlchemy re-derive the
# statement's cache key and re-match its parameters on every execution, a
# quarter of the CPU time of a small read.
SCOPE_PARAMETER = "engram_scope_organization_id"
_SCOPE_BIND: BindParameter[Any] = bindparam(SCOPE_PARAMETER)
_SCOPE_CRITERIA = with_loader_criteria(
    OrganizationScoped,
    lambda cls: cls.organization_id == _SCOPE_BIND,
    include_aliases=True,
)


# Marks a statement that already carries the criteria (see :func:`prescoped`).
_PRESCOPED = "engram_prescoped"


def prescoped(statement: StatementT) -> StatementT:
    """``statement`` with the organization criteria applied once, ahead of time.

    For statements built once and executed often: the per-execution hook then
    only supplies the organization parameter, and SQLAlchemy reuses the
    statement's memoized cache key instead of recomputing it on every call.
    Run it only in sessions scoped to one organization, which supply the value.
    """
    return statement.options(_SCOPE_CRITERIA).execution_options(**{_PRESCOPED: True})


def scoped_update(table: Table) -> Update:
    """A Core ``UPDATE`` of ``table`` that already says ``organization_id = <scope>``.

    For an update run at every step: the ORM's update path, which the
    criteria option of :func:`prescoped` needs, rebuilds the statement (and
    its cache key) on every execution.  This one names the organization
    itself, as the bound parameter the session's hook supplies for prescoped
    statements, so it runs only in a session scoped to one organization; in
    one without, it is refused like any unscoped query.
    """
    criterion = table.c.organization_id == _SCOPE_BIND
    return update(table).where(criterion).execution_options(**{_PRESCOPED: True})


class ScopedSession(Session):
    """The sync session class behind every ``AsyncSession`` the store opens."""


def organization_of(session: Session) -> str | None:
    value = session.info.get(ORGANIZATION_KEY)
    return str(value) if value is not None else None


def _touches_scoped_models(state: ORMExecuteState) -> bool:
    return any(issubclass(mapper.class_, OrganizationScoped) for mapper in state.all_mappers)


@event.listens_for(ScopedSession, "do_orm_execute")
def _add_organization_criteria(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    session = state.session
    if session.info.get(ALL_ORGANIZATIONS_KEY):
        return
    organization_id = organization_of(session)
    if organization_id is None:
        if _touches_scoped_models(state) or state.execution_options.get(_PRESCOPED):
            raise OrganizationScopeError(
                "a query on organization-owned rows ran in a session without an organization"
            )
        return
    if not state.execution_options.get(_PRESCOPED):
        state.statement = state.statement.options(_SCOPE_CRITERIA)
    parameters = state.parameters
    if isinstance(parameters, Mapping) or parameters is None:
        state.parameters = {**(parameters or {}), SCOPE_PARAMETER: organization_id}
    else:  # executemany: one dictionary per row
        state.parameters = [{**each, SCOPE_PARAMETER: organization_id} for each in parameters]


@event.listens_for(ScopedSession, "before_flush")
def _check_written_rows(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    if session.info.get(READ_ONLY_KEY) and (session.new or session.dirty or session.deleted):
        raise OrganizationScopeError("a read-only session tried to write")
    if session.info.get(ALL_ORGANIZATIONS_KEY):
        return
    organization_id = organization_of(session)
    for obj in [*session.new, *session.dirty, *session.deleted]:
        if not isinstance(obj, OrganizationScoped):
            continue
        if organization_id is None:
            raise OrganizationScopeError(
                f"a {type(obj).__name__} was written in a session without an organization"
            )
        if obj.organization_id is None:
            obj.organization_id = organization_id
        elif obj.organization_id != organization_id:
            raise OrganizationScopeError(
                f"a {type(obj).__name__} of another organization was written in this session"
            )
