"""`python -m mykey` runs the CLI."""

from mykey.cli import main

raise SystemExit(main())
