import sys

from taskclient.cli import main

sys.exit(main())
