"""Subcommands of the ``imaging-lifecycle`` console command.

Each module here is one subcommand, discovered by name: a module ``foo_bar``
becomes ``imaging-lifecycle foo-bar``. A module defines

* ``HELP``: one line for ``--help``;
* ``add_arguments(parser)``: its options;
* ``run(args) -> int``: the exit code.

Adding a subcommand means adding a module; ``cli.py`` never changes.
"""
