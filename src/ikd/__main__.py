import sys

from ikd.cli import main

sys.exit(main())
