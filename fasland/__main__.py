import sys

from fasland.cli import main

sys.exit(main())
