from cityneuron.cli import main

raise SystemExit(main())
