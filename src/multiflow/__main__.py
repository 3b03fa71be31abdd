from multiflow.cli import entry

raise SystemExit(entry())
