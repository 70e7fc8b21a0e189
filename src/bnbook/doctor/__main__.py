"""``python -m bnbook.doctor``: the ``bnbook-doctor`` command line."""

from bnbook.doctor.command_line import cli

if __name__ == "__main__":
    cli()
