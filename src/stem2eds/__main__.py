"""``python -m stem2eds`` runs the command-line tool."""
import sys

from .cli import main

sys.exit(main())
