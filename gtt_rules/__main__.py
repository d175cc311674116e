import sys

from gtt_rules.cli import main

sys.exit(main())
