"""What route handlers receive: the services built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from services.api.auth import KeyRing, Principal, require
from services.api.submit import Submitter
from services.api.submit_rate import SubmitRate
from services.api.watchers import Watchers
from services.runtime import Stores
from shared.apikeys import Scope
from shared.jobtypes import JobType
from shared.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    stores: Stores
    registry: dict[str, JobType]
    submitter: Submitter
    watchers: Watchers
    keyring: KeyRing
    submit_rate: SubmitRate

    @property
    def jobs(self) -> Any:
        return self.stores.jobs


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]
Reader = Annotated[Principal, Depends(require(Scope.READ))]
"""The caller, allowed to read its tenant's jobs (any tenant's with ``admin``)."""
Writer = Annotated[Principal, Depends(require(Scope.SUBMIT))]
"""The caller, allowed to submit jobs and to change its tenant's jobs."""
