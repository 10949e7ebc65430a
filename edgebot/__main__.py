import sys

from edgebot.cli import main

sys.exit(main())
