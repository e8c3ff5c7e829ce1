from blindlink.cli.main import main

raise SystemExit(main())
