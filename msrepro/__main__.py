import sys

from msrepro.cli import main

sys.exit(main())
