"""Imported by spawned DDP test workers so that they see the same registry as the parent."""

import toy_models  # noqa: F401
import rule_models  # noqa: F401
