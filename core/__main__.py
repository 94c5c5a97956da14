"""`python -m mykey` runs the CLI."""

from .cli import main

raise SystemExit(main())
