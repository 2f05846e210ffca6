import sys

from rift.cli import main

sys.exit(main())
