"""Bot runtime: warm Node 22 workers that run Medplum bots (vmcontext / awslambda) exactly like Medplum."""
from medport.emulator.medplum.runtime.pool import BotRuntime, ExecRequest, ExecResult

__all__ = ["BotRuntime", "ExecRequest", "ExecResult"]
