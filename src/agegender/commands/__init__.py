"""Subcommands of the ``agegender`` command line (see ``cli.COMMANDS``)."""
