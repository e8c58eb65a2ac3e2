import sys

from pddpm_monai.cli import main

sys.exit(main())
