import sys

from optinspect.cli import main

sys.exit(main())
