"""Settings for `make run` and `make test` on one machine (plain HTTP on localhost)."""

from .base import *  # noqa: F401,F403
