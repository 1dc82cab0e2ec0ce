from ingester.cli import main

raise SystemExit(main())
