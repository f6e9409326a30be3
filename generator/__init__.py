"""Config, rendering, deployment and the `medport` command line."""
from medport import __version__

__all__ = ["__version__"]
