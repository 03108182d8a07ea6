from index_builder.cli import main

raise SystemExit(main())
