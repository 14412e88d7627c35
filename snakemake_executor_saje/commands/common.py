"""What every `saje` command shares: exit codes, global options, the Batch client, errors.

Exit codes (docs/cli.md), the same for every command:

    0  ok
    1  the operation failed at Azure Batch (the Batch error code and message are printed),
       or what was asked for did not happen (resize errors, start-task failures, a timeout)
    2  usage error (bad arguments, a refused confirmation)
    3  not found (pool, job, task)
    4  credentials or configuration problem (no endpoint, bad credentials file, 401/403)

Credentials come from the same resolution as the executor (credentials.py): shared key from
SNAKEMAKE_SAJE_ACCOUNT_NAME/KEY, else the profile (--profile or
SNAKEMAKE_SAJE_CREDENTIAL_PROFILE), else DefaultAzureCredential. A profile named on the
command line wins over account name/key/URL from the environment. No secret is ever printed:
messages name profiles, files and fields, never values.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .output import Output

if TYPE_CHECKING:
    from azure.batch import BatchClient

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFIG = 4

ENV_PREFIX = "SNAKEMAKE_SAJE_"


class CliError(Exception):
    """An error with the exit code it maps to; ``code`` is a Batch (or SAJE) error code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code


def global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """--profile, --account-url, --credentials-file, --json.

    Added to the top-level parser (with defaults) and to every subcommand with
    ``suppress=True``, so that they work before or after the command words
    (`saje --json pool list` and `saje pool list --json`).
    """
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    group = parser.add_argument_group("global options")
    group.add_argument("--profile", metavar="NAME", default=default(None),
                       help="credential profile in the credentials file (default:"
                            f" ${ENV_PREFIX}CREDENTIAL_PROFILE, else shared key from"
                            f" ${ENV_PREFIX}ACCOUNT_NAME/KEY, else DefaultAzureCredential)")
    group.add_argument("--account-url", metavar="URL", default=default(None),
                       help=f"Batch account endpoint (default: ${ENV_PREFIX}ACCOUNT_URL, else the"
                            " profile's batch_account_url)")
    group.add_argument("--credentials-file", metavar="FILE", type=Path, default=default(None),
                       help=f"credentials file (default: ${ENV_PREFIX}CREDENTIALS_FILE, else"
                            " ~/.azure/saje.json)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print one JSON document on stdout instead of tables")


def version_text() -> str:
    """`saje --version`: SAJE's version and those of the pieces it talks through."""
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return (f"saje {of('snakemake-executor-plugin-saje')} (snakemake {of('snakemake')},"
            f" azure-batch {of('azure-batch')})")


@dataclass
class BatchSettings:
    """The settings-like object credentials.resolve_batch_* read (no repr of the key)."""

    account_url: str | None = None
    credential_profile: str | None = None
    credentials_file: Path | None = None
    account_name: str | None = None
    account_key: str | None = None

    def __repr__(self) -> str:  # the key never reaches a log line
        return (f"BatchSettings(account_url={self.account_url!r}, credential_profile="
                f"{self.credential_profile!r}, credentials_file={self.credentials_file!r},"
                f" account_name={self.account_name!r})")


def batch_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> BatchSettings:
    """Command-line options over SNAKEMAKE_SAJE_* variables; an explicit --profile wins over
    account name, key and URL from the environment."""
    env = os.environ if environ is None else environ
    get = lambda name: env.get(ENV_PREFIX + name) or None  # noqa: E731
    explicit_profile = getattr(args, "profile", None)
    profile = explicit_profile or get("CREDENTIAL_PROFILE")
    from_env = not explicit_profile
    return BatchSettings(
        account_url=getattr(args, "account_url", None) or (get("ACCOUNT_URL") if from_env else None),
        credential_profile=profile,
        credentials_file=getattr(args, "credentials_file", None) or get("CREDENTIALS_FILE"),
        account_name=get("ACCOUNT_NAME") if from_env else None,
        account_key=get("ACCOUNT_KEY") if from_env else None,
    )


class Context:
    """One command's world: its arguments, its output, and (made on first use) a Batch client."""

    def __init__(self, args: argparse.Namespace, output: Output):
        self.args = args
        self.out = output
        self._client: BatchClient | None = None
        self.endpoint: str | None = None

    @property
    def client(self) -> "BatchClient":
        if self._client is None:
            from azure.batch import BatchClient

            from ..credentials import CredentialsError, resolve_batch_account_url, resolve_batch_credential

            settings = batch_settings(self.args)
            try:
                self.endpoint = resolve_batch_account_url(settings)
                credential = resolve_batch_credential(settings)
            except CredentialsError as exc:
                # The shared resolution names the executor's flag; here the option is --account-url.
                message = str(exc).replace("--saje-account-url", "--account-url")
                if not (settings.account_url or settings.credential_profile):
                    from .emulator import no_endpoint_hint

                    message += " " + no_endpoint_hint()
                raise CliError(message, EXIT_CONFIG, "CredentialsError") from None
            self._client = BatchClient(self.endpoint, credential)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _first_line(text: Any, limit: int = 200) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def batch_error(exc: Exception) -> CliError:
    """The CliError for an exception from the SDK: code, first message line, detail values."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceNotFoundError,
                                       ServiceRequestError)

    if isinstance(exc, ClientAuthenticationError) and not getattr(exc, "status_code", None):
        # No response: the credential itself found nothing usable (DefaultAzureCredential lists
        # what it tried, without secrets; the list is the useful part).
        text = str(exc).strip() or "authentication failed"
        return CliError(f"No usable Azure credential: {text}", EXIT_CONFIG, "ClientAuthenticationError")
    if isinstance(exc, HttpResponseError):
        error: Any = getattr(exc, "error", None)
        code = getattr(error, "code", None) or (f"HTTP{exc.status_code}" if exc.status_code else "HttpError")
        message = (getattr(error, "message", None) or exc.reason or str(exc)).strip()
        first = message.splitlines()[0] if message else ""
        details = [f"{d.code}={_first_line(d.message)}" for d in (getattr(error, "details", None) or [])
                   if getattr(d, "code", None)]
        text = f"{code}: {first}" + (f" ({', '.join(details)})" if details else "")
        if isinstance(exc, ResourceNotFoundError) or exc.status_code == 404:
            return CliError(text, EXIT_NOT_FOUND, code)
        if isinstance(exc, ClientAuthenticationError) or exc.status_code in (401, 403):
            return CliError(text + " (check the credential profile or account key)", EXIT_CONFIG, code)
        return CliError(text, EXIT_FAILED, code)
    if isinstance(exc, ServiceRequestError) and "non-TLS" in str(exc):
        return CliError("The Batch endpoint is plain http://, and Entra ID (bearer) tokens need https:"
                        " use an https:// account URL, or a shared key (SNAKEMAKE_SAJE_ACCOUNT_NAME/KEY or"
                        " a profile's batch_account_name/batch_account_key).", EXIT_CONFIG, "InsecureEndpoint")
    if isinstance(exc, ServiceRequestError):
        return CliError(f"Cannot reach the Batch endpoint: {exc}", EXIT_FAILED, "ServiceRequestError")
    raise exc


def run_command(func: Callable[[Context], int | None], args: argparse.Namespace) -> int:
    """Run one command function, turning every known error into its exit code."""
    from azure.core.exceptions import AzureError

    from ..credentials import CredentialsError
    from ..pools import PoolSpecError

    from ..batch import quiet_azure_sdk_logging

    quiet_azure_sdk_logging()
    out = Output(json_mode=bool(getattr(args, "json", False)))
    ctx = Context(args, out)
    try:
        return int(func(ctx) or EXIT_OK)
    except CliError as exc:
        out.error(exc.message, exc.exit_code, exc.code)
        return exc.exit_code
    except CredentialsError as exc:
        out.error(str(exc), EXIT_CONFIG, "CredentialsError")
        return EXIT_CONFIG
    except PoolSpecError as exc:
        out.error(str(exc), EXIT_USAGE, "InvalidPoolSpec")
        return EXIT_USAGE
    except AzureError as exc:
        err = batch_error(exc)
        out.error(err.message, err.exit_code, err.code)
        return err.exit_code
    except KeyboardInterrupt:
        out.error("interrupted", 130, "Interrupted")
        return 130
    finally:
        ctx.close()


def confirm(ctx: Context, question: str) -> None:
    """Ask on the terminal unless --yes; without a terminal, refuse (exit 2)."""
    import sys

    if getattr(ctx.args, "yes", False):
        return
    if ctx.args.json or not sys.stdin.isatty():
        raise CliError(f"{question} Refused: pass --yes to confirm without a terminal.", EXIT_USAGE, "NotConfirmed")
    from rich.prompt import Confirm

    if not Confirm.ask(question, console=ctx.out.err, default=False):
        raise CliError("Cancelled; nothing was changed.", EXIT_USAGE, "NotConfirmed")


def wait_gone(ctx: Context, what: str, get: Callable[[], Any]) -> None:
    """Poll ``get`` (a GET of the thing being deleted) until it is 404, for --wait.

    Uses the command's --timeout (minutes, exit 1 when exceeded) and --poll-interval.
    """
    import time
    from contextlib import nullcontext

    from azure.core.exceptions import ResourceNotFoundError

    deadline = time.monotonic() + ctx.args.timeout * 60
    spinner = nullcontext() if ctx.out.json_mode else ctx.out.err.status(f"waiting for {what} to be gone")
    with spinner:
        while True:
            try:
                get()
            except ResourceNotFoundError:
                break
            if time.monotonic() >= deadline:
                raise CliError(f"{what[:1].upper()}{what[1:]} was still being deleted after"
                               f" {ctx.args.timeout:g} minutes.", EXIT_FAILED, "Timeout")
            time.sleep(ctx.args.poll_interval)
    ctx.out.info(f"{what[:1].upper()}{what[1:]} deleted.")


def wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"wait until {what}")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="MINUTES",
                        help="give up waiting after this long (exit 1; default 30)")
    parser.add_argument("--poll-interval", type=float, default=2.0, metavar="SECONDS",
                        help=argparse.SUPPRESS)


def deletion_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--yes (no confirmation question) and the --wait options of a delete command."""
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    wait_options(parser, what)
