import sys

from fipo.cli import main

sys.exit(main())
