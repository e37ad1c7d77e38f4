"""`python -m stunner_dp`: the same as the `stunner-dp` command."""

from stunner_dp.cli import main

raise SystemExit(main())
