"""``python -m dmdl`` (what ``torchrun ... -m dmdl train ...`` runs): the ``dmdl`` command."""

import sys

from dmdl.cli import main

sys.exit(main())
