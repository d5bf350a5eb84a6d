import sys

from mta.cli.main import main

sys.exit(main())
