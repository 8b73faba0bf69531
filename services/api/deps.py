"""What route handlers receive: the services built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from services.api.submit import Submitter
from services.api.watchers import Watchers
from services.runtime import Stores
from shared.jobtypes import JobType
from shared.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    stores: Stores
    registry: dict[str, JobType]
    submitter: Submitter
    watchers: Watchers

    @property
    def jobs(self) -> Any:
        return self.stores.jobs


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]
