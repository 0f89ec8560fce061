"""Deprecated name of :mod:`genrec.recipe` (kept so that ``from genrec.pipeline import load_config,
run_recipe`` goes on working); new code imports from :mod:`genrec.recipe`."""

from genrec.recipe import *  # noqa: F401,F403
from genrec.recipe import __all__  # noqa: F401
