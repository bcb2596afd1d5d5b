"""``python -m gpt_rs`` runs the ``gpt-rs`` command."""

import sys

from .cli import main

sys.exit(main())
