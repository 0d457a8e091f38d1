"""The ``dynamo-launch`` command line. The only module that prints or exits."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import DynamoLaunchError, InventoryError
from .inventory import load
from .plan import Plan, build
from .plan.render import count, to_json, to_text

__all__ = ["main"]

INVENTORY = click.argument("inventory", type=click.Path(dir_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dynamo-launch")
def main() -> None:
    """Bring up and supervise an NVIDIA Dynamo inference cluster on bare-metal hosts.

    One TOML inventory describes the hosts and the deployment; see
    docs/inventory.md for every key.
    """


@main.command()
@INVENTORY
def validate(inventory: str) -> None:
    """Check INVENTORY and report every problem, one line each (exit 1 if any)."""
    result = _plan(inventory)
    click.echo(
        f"{inventory}: ok — cluster {result.cluster!r}, {count(len(result.hosts), 'host')}, "
        f"{count(len(result.processes), 'process')}, {count(len(result.gangs), 'gang')}"
    )


@main.command()
@INVENTORY
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(inventory: str, as_json: bool) -> None:
    """Print what `up` would start: per host, in start order, pasteable commands (secrets masked)."""
    result = _plan(inventory)
    click.echo(to_json(result) if as_json else to_text(result), nl=False)


def _plan(path: str) -> Plan:
    """Load, validate and plan ``path``, or print every problem and exit 1."""
    try:
        return build(load(path))
    except InventoryError as e:
        for problem in e.problems:
            click.echo(str(problem), err=True)
        n = len(e.problems)
        click.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
        sys.exit(1)
    except DynamoLaunchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
