"""`python -m common.cli ...` is `fedtl ...`."""

import sys

from common.cli.main import main

sys.exit(main())
