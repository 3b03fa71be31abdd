from multiflow.cli import main

raise SystemExit(main())
