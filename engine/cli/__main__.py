"""``python -m vqclip.cli``: the same as the ``vqclip`` command."""
import sys

from vqclip.cli.main import main

sys.exit(main())
