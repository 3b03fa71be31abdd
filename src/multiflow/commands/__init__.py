"""CLI subcommands.

Each module in this package is one subcommand of ``multiflow``. It defines

* ``NAME``: the subcommand's name (str),
* ``HELP``: a one-line description (str),
* ``add_arguments(parser)``: adds its options to an ``argparse.ArgumentParser``,
* ``run(args) -> int``: runs it and returns the exit status.

Modules are discovered automatically; keep heavy imports (torch, timm) inside ``run``.
"""
