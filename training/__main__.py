"""`python -m training` is `rnnlm-train`."""

import sys

from training.cli import main

sys.exit(main())
