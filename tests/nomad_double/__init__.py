"""A test double of Nomad's HTTP API, for the operator commands' tests.

No Nomad agent runs here. ``server`` answers the endpoints deploy and verify
call as Nomad 2.0 does, ``jobspec`` parses jobs as its /v1/jobs/parse does,
against ``schema`` (the blocks and attributes Nomad accepts), and
``allocations`` plays the task states and events a Nomad client makes. Each
behaviour names the file of hashicorp/nomad it follows.
"""

from .allocations import INIT_TASK, TaskRun
from .jobspec import JobspecError, parse_job
from .server import VARIABLES, WRITE, NomadDouble, Recorded, Token

__all__ = [
    "INIT_TASK",
    "VARIABLES",
    "WRITE",
    "JobspecError",
    "NomadDouble",
    "Recorded",
    "TaskRun",
    "Token",
    "parse_job",
]
