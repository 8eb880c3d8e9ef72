"""The refusals of durable runs: positions a stream cannot resume from, runs that cannot stop.

Each carries the catalog reason a client branches on and the metadata it
needs to act (the run, and the positions still kept).
"""

from __future__ import annotations

from engram.services.errors import FailedPreconditionError, InvalidArgumentError


class RunEventsExpiredError(FailedPreconditionError):
    reason = "RUN_EVENTS_EXPIRED"


class RunPositionUnknownError(FailedPreconditionError):
    reason = "RUN_POSITION_UNKNOWN"


class RunAlreadyEndedError(FailedPreconditionError):
    reason = "RUN_ALREADY_ENDED"


def run_events_expired(run_id: str, first_seq: int | None = None) -> RunEventsExpiredError:
    """The position is no longer kept (too old, trimmed, or in another process's memory)."""
    if first_seq is None:
        message = (
            f"the events of runs/{run_id} are no longer kept here; read its outcome with "
            "GetRun and its messages with ListMessages"
        )
    else:
        message = (
            f"the events of runs/{run_id} before seq {first_seq} are no longer kept; resume "
            f"from after_seq {first_seq - 1} or later, or read the messages with ListMessages"
        )
    error = RunEventsExpiredError(
        message, subject=f"runs/{run_id}", violation_type="RUN_EVENTS_EXPIRED"
    )
    info = {"run": f"runs/{run_id}"}
    if first_seq is not None:
        info["first_seq"] = str(first_seq)
    error.info = info
    return error


def run_position_unknown(run_id: str, after_seq: int, last_seq: int) -> RunPositionUnknownError:
    """The client asked to resume after an event the run never had."""
    error = RunPositionUnknownError(
        f"runs/{run_id} has no event {after_seq}: its last is {last_seq}",
        subject=f"runs/{run_id}",
        violation_type="RUN_POSITION_UNKNOWN",
    )
    error.info = {"run": f"runs/{run_id}", "last_seq": str(last_seq)}
    return error


def run_already_ended(run_id: str, status: str) -> RunAlreadyEndedError:
    error = RunAlreadyEndedError(
        f"runs/{run_id} has already ended ({status}); there is nothing to cancel",
        subject=f"runs/{run_id}",
        violation_type="RUN_ALREADY_ENDED",
    )
    error.info = {"run": f"runs/{run_id}", "status": status}
    return error


def no_active_run(agent_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"agents/{agent_id} has no run in progress and none waiting for an approval",
        subject=f"agents/{agent_id}",
        violation_type="NO_ACTIVE_RUN",
    )


def request_id_reused(agent_id: str) -> InvalidArgumentError:
    return InvalidArgumentError.field(
        "request_id",
        f"was already used to start a run of another agent than agents/{agent_id}; "
        "use a new UUID for each new request",
    )
