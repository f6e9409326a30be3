"""Bot runtime: warm Node 22 workers that run Medplum bots (vmcontext / awslambda) exactly like Medplum."""

from .lazy import LazyRuntime
from .pool import BotRuntime, ExecRequest, ExecResult

__all__ = ["BotRuntime", "ExecRequest", "ExecResult", "LazyRuntime"]
