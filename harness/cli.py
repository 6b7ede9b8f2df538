"""The ``harness`` command line (task descriptors and the job graph arrive with the harness issue)."""

from __future__ import annotations

import typer

app = typer.Typer(name="harness", help="Benchmark selfunet over many tasks.", no_args_is_help=True,
                  add_completion=False)


@app.command()
def version() -> None:
    """Print the installed selfunet version."""
    from selfunet import __version__

    typer.echo(__version__)


def main() -> None:
    app()
