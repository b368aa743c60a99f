"""`python -m nst_server` is `nst-server`."""

import sys

from nst_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
