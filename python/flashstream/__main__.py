from flashstream.cli import main

raise SystemExit(main())
