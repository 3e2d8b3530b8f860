import sys

from namespacefs.cli import main

sys.exit(main())
