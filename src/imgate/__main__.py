import sys

from imgate.cli import main

sys.exit(main())
