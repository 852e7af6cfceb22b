import sys

from ndd.cli import main

sys.exit(main())
