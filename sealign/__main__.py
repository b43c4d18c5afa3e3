from sealign.cli import main

raise SystemExit(main())
