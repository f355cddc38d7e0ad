from farmhand.cli import main

raise SystemExit(main())
