"""The ``octswap`` application: global options, the commands, and the error map applied once.

Library modules (torch, torchvision, fvcore) are imported inside the commands, so
``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from octswap import __version__
from octswap.cli import bench, convert, export, heal, models, plan, report, tune, zoo
from octswap.cli.errors import HANDLED, exit_code_for
from octswap.cli.output import error_line, out

__all__ = ["app", "main"]

_DEBUG = "--debug"



def _click_errors(name: str) -> tuple[type[BaseException], ...]:
    """click's exception ``name`` and, from typer 0.2x on, its vendored copy's (typer._click)."""
    modules = [click.exceptions]
    try:
        from typer._click import exceptions as vendored  # typer >= 0.2x ships its own click

        modules.append(vendored)
    except ImportError:
        pass
    return tuple(getattr(m, name) for m in modules if hasattr(m, name))


_USAGE = _click_errors("UsageError")
_NO_ARGS = _click_errors("NoArgsIsHelpError")  # click >= 8.2: a command given nothing shows its help


class OctswapGroup(TyperGroup):
    """Typer's group, plus two things every command shares: ``--debug`` is accepted
    anywhere on the line (``octswap convert m --debug``), and failures go through the
    one error map (:func:`octswap.cli.errors.exit_code_for`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if _DEBUG in args[:end]:  # hand it to the group's own option, wherever it was written
            args = [_DEBUG, *(a for a in args[:end] if a != _DEBUG), *args[end:]]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _NO_ARGS:
            raise  # `octswap convert` alone: click shows the command's help
        except _USAGE as error:  # a bad option or value: one line, as every other input error
            if ctx.meta.get("octswap.debug"):
                raise
            command = error.ctx.command_path if error.ctx is not None else "octswap"
            error_line(f"{error.format_message()} (see '{command} --help')")
            raise typer.Exit(error.exit_code) from None
        except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException, BrokenPipeError):
            # A command's own exit (typer.Exit subclasses RuntimeError), click's usage errors and
            # a closed stdout (`octswap models | head`) are typer's to handle.
            raise
        except HANDLED as error:
            if ctx.meta.get("octswap.debug"):
                raise
            raise typer.Exit(exit_code_for(error, command=ctx.invoked_subcommand)) from None


app = typer.Typer(
    name="octswap",
    cls=OctswapGroup,
    help="Convert the Conv2d layers of a CNN into Octave Convolutions and report what it saves.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click-style usage errors: a few lines ending in one "Error: ..." line, no boxes.
    rich_markup_mode=None,
)
for module in (convert, report, plan, tune, zoo, bench, heal, export, models):
    app.command(name=module.__name__.rpartition(".")[2])(module.command)


def _version(value: bool) -> None:
    if value:
        out.print(f"octswap {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version.")] = False,
    debug: Annotated[bool, typer.Option(_DEBUG, help="Show tracebacks (accepted after the command too).")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output on stderr.")] = 0,
) -> None:
    """Convert CNNs to Octave Convolutions."""
    ctx.meta["octswap.debug"] = debug
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("octswap: %(levelname)s: %(message)s"))
    logger = logging.getLogger("octswap")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main() -> None:
    """Console-script entry point."""
    app()
