"""`python -m sandbox.emulator`."""

from .cli import main

raise SystemExit(main())
