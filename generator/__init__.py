"""Config, rendering, deployment and the `medport` command line, in sub-packages by role: `generation`
(config -> bots and their setup), `remote` (operations against servers), `local` (the local stack), `console`,
`cli`; `options`, `progress` and `statefile` are what every command shares."""

from medport import __version__

__all__ = ["__version__"]
