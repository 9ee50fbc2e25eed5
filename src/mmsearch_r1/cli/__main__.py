import sys

from mmsearch_r1.cli import main

sys.exit(main())
