"""Run directories live in :mod:`dgm.runs`, where training and evaluation both reach them; this
name is kept for code written against it."""

from dgm.runs import *  # noqa: F401,F403
from dgm.runs import __all__  # noqa: F401
