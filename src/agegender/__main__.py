"""``python -m agegender``."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command: one line, no traceback
    print("agegender: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
