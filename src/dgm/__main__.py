"""``python -m dgm ...`` (and ``torchrun -m dgm train ...``) runs the CLI."""

import sys

from dgm.cli import main

sys.exit(main())
