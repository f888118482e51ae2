"""Subcommands of the `drecycle` CLI (see `domainbed_recycle.cli`)."""
