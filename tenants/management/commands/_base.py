"""Shared behaviour of the operator commands: one-line errors, exit code 1, nothing written."""

from __future__ import annotations

import argparse
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser, handle_default_options
from django.db import connections


class OperatorCommand(BaseCommand):
    """Scripts depend on these commands: a bad argument prints one line and exits 1."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.called_from_command_line = True

        def one_line_error(message: str) -> None:
            sys.stderr.write(f"error: {message}\n")
            sys.exit(1)

        parser.error = one_line_error
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        # BaseCommand prints "CommandError: ..."; scripts get "error: ..." like argparse's.
        self._called_from_command_line = True
        parser = self.create_parser(argv[0], argv[1])
        options = vars(parser.parse_args(argv[2:]))
        args = options.pop("args", ())
        handle_default_options(argparse.Namespace(**options))
        try:
            self.execute(*args, **options)
        except CommandError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(1)
        finally:
            connections.close_all()

    def fail(self, message: str) -> CommandError:
        return CommandError(message, returncode=1)

    def check_model(self, instance, exclude: tuple[str, ...] = ()) -> None:
        """The model's own rules (lengths, formats, uniqueness) as a one-line error, before anything is written."""
        try:
            instance.full_clean(exclude=list(exclude))
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
            raise self.fail(problems)
