"""The ``ociflow`` command line: argparse front end over the Python API.

Heavy modules (aiohttp, the engine) are imported only when a command runs, so ``--version``
and ``--help`` start fast. Every error becomes one line on stderr and exit code 1 (2 for usage
errors, 130 for an interrupt); ``--debug`` adds the traceback.

Ctrl-C (SIGINT) while a copy runs cancels it (``asyncio.run`` turns the first SIGINT into a
cancellation of the copy): transfers stop within about a second, leaving partial downloads and
upload sessions for the next run, and the CLI says so in one line. A second Ctrl-C while that
cleanup runs interrupts at once, with the same line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from ociflow import __version__

if TYPE_CHECKING:
    from ociflow.http.credentials import AzureAD, Credentials
    from ociflow.http.transport import HttpOptions

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ociflow", description="Copy container images and OCI artifacts, fast and verified."
    )
    parser.add_argument("--version", action="version", version=f"ociflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_options()
    credentials = _credentials_type()
    copy = commands.add_parser(
        "copy",
        parents=[common],
        help="copy an image or index between registries, OCI layouts and archives",
        description="Copy SRC to DST. References: docker://HOST/REPO[:TAG][@DIGEST], bare "
        "Docker references (docker.io by default), oci:PATH[:TAG|@DIGEST], "
        "oci-archive:PATH[:TAG|@DIGEST], docker-archive:PATH[:NAME:TAG].",
    )
    copy.add_argument("src", metavar="SRC")
    copy.add_argument("dst", metavar="DST")
    copy.add_argument("-j", "--jobs", type=_positive, default=4,
                      help="concurrent blob transfers (default 4)")
    copy.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                      help="copy only this platform's manifest of a multi-platform index")
    copy.add_argument("--range-parallel", metavar="K", type=_positive,
                      help="connections fetching one large blob as byte ranges (default 4 for "
                      "remote registries, 1 for loopback ones; 1 turns ranges off)")
    copy.add_argument("--chunk-size", metavar="SIZE", type=_byte_size,
                      help="upload blobs larger than SIZE in chunks of SIZE, raised to what the "
                      "registry asks for (default: blobs of 256MiB and more, in chunks of "
                      "64MiB); a chunked upload can be resumed after a crash")
    copy.add_argument("--src-creds", metavar="USER[:PASSWORD]", type=credentials,
                      help="credentials for the source registry (without the password: it is "
                           "asked for on a terminal, else read from standard input)")
    copy.add_argument("--dest-creds", metavar="USER[:PASSWORD]", type=credentials,
                      help="credentials for the destination registry (as --src-creds)")
    copy.add_argument("--src-azure", action="store_true",
                      help="sign in to the source registry (Azure Container Registry) with "
                           "Azure AD (azure-identity's DefaultAzureCredential)")
    copy.add_argument("--dest-azure", action="store_true",
                      help="sign in to the destination registry with Azure AD")
    for side, name in (("src", "source"), ("dest", "destination")):
        copy.add_argument(f"--{side}-plain-http", action="store_true",
                          help=f"use plain HTTP for the {name} registry only")
        copy.add_argument(f"--{side}-insecure", action="store_true",
                          help=f"skip TLS certificate verification for the {name} registry only")
    copy.add_argument("--no-resume", dest="resume", action="store_false",
                      help="do not keep partial downloads and open upload sessions for a later "
                      "run to continue (by default an interrupted copy resumes when run again; "
                      "upload sessions are recorded in $OCIFLOW_STATE_DIR or "
                      "~/.local/state/ociflow)")
    sign_in = argparse.ArgumentParser(add_help=False)
    sign_in.add_argument("--creds", metavar="USER[:PASSWORD]", type=credentials,
                         help="credentials for the registry (without the password: it is "
                              "asked for on a terminal, else read from standard input)")
    sign_in.add_argument("--azure", action="store_true",
                         help="sign in with Azure AD (Azure Container Registry)")
    for name, arg, meta, what in (
        ("catalog", "registry", "REGISTRY", "list the repositories of a registry"),
        ("tags", "repository", "REGISTRY/REPO", "list the tags of a repository"),
        ("inspect", "reference", "REGISTRY/REPO[:TAG|@DIGEST]",
         "print a manifest's digest, media type, size and content"),
        ("delete", "reference", "REGISTRY/REPO[:TAG|@DIGEST]",
         "delete a manifest (a tag is resolved to its digest: every tag on it goes too)"),
    ):
        command = commands.add_parser(name, parents=[common, sign_in], help=what,
                                      description=what[0].upper() + what[1:] + ".")
        command.add_argument(arg, metavar=meta)
        if name in ("catalog", "tags"):
            command.add_argument("--page-size", metavar="N", type=_positive,
                                 help="entries asked for per request (the registry's default)")
        if name == "inspect":
            command.add_argument("--raw", action="store_true",
                                 help="print the manifest's exact bytes only")
    bench = commands.add_parser(
        "bench",
        parents=[common, sign_in],
        help="measure a registry: push, pull and verify random blobs, then delete them",
        description="Push random blobs to REGISTRY/REPO, pull them back and verify them, "
        "measure HEAD and small-blob request rates, and delete every blob created (any that "
        "cannot be deleted are listed).",
    )
    bench.add_argument("repository", metavar="REGISTRY/REPO")
    bench.add_argument("--size", type=_byte_size, default="256MiB",
                       help="size of each blob, e.g. 64MiB, 1GiB (default 256MiB)")
    bench.add_argument("--blobs", type=_positive, default=1, help="number of blobs (default 1)")
    bench.add_argument("-j", "--jobs", type=_positive, default=4,
                       help="concurrent transfers (default 4)")
    return parser


def _common_options() -> argparse.ArgumentParser:
    """Options of every command that talks to registries."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plain-http", action="store_true",
                        help="use plain HTTP for registries (never for credentials you care about)")
    common.add_argument("--insecure", action="store_true",
                        help="do not verify registry TLS certificates")
    common.add_argument("--retries", metavar="N", type=_non_negative, default=4,
                        help="retries of a failed request after the first attempt, with "
                        "exponential backoff: connection errors, stalls, 408, 429 and 5xx "
                        "(default 4; 0 disables retries)")
    common.add_argument("--retry-max-wait", metavar="S", type=_seconds(allow_zero=True),
                        default=60.0,
                        help="longest Retry-After wait honoured; a registry asking for more "
                        "fails the copy at once with a rate-limit error (default 60)")
    common.add_argument("--stall-timeout", metavar="S", type=_seconds(allow_zero=False),
                        default=60.0,
                        help="give up on a connection that sends no data for S seconds; a slow "
                        "but moving transfer is never cut off (default 60)")
    common.add_argument("--authfile", metavar="PATH",
                        help="Docker config file with registry credentials (default: the "
                             "first of $DOCKER_CONFIG/config.json (else ~/.docker/config.json), "
                             "$REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json)")
    common.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    common.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout")
    common.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    return common


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _byte_size(text: str) -> int:
    from ociflow.bench import parse_size

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return value


def _sign_in(creds: Credentials | None, azure: bool, side: str) -> Credentials | AzureAD | None:
    if not azure:
        return creds
    if creds is not None:
        raise ValueError(f"{side}-creds and {side}-azure exclude each other")
    from ociflow.http.credentials import AzureAD

    return AzureAD()


def _credentials_type() -> Callable[[str], Credentials]:
    """The argparse type of ``--creds``-like options, for one parse: ``USER:PASSWORD``, or
    ``USER`` alone, the password then asked for on a terminal or read from the first line of
    standard input (so that it never shows in ``ps``); stdin holds one password at most."""
    from ociflow.http.credentials import Credentials

    stdin_read = False

    def parse(text: str) -> Credentials:
        nonlocal stdin_read
        if ":" in text or not text:
            try:
                return Credentials.parse(text)
            except ValueError:
                # Never echo the argument back: it holds a password.
                raise argparse.ArgumentTypeError("expected USER[:PASSWORD]") from None
        if sys.stdin.isatty():
            import getpass

            return Credentials(username=text, password=getpass.getpass(f"Password for {text}: "))
        if stdin_read:
            raise argparse.ArgumentTypeError("only one password can be read from standard input")
        stdin_read = True
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise argparse.ArgumentTypeError(f"no password for {text} on standard input")
        return Credentials(username=text, password=password)

    return parse


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse type for a finite number of seconds (positive, or also 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            lowest = "0 or more" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, {lowest}")
        return value

    return parse


def run() -> NoReturn:
    """The ``ociflow`` console script: :func:`main`, then an immediate exit.

    When :func:`main` returns, every file and connection is closed and every worker thread
    joined; what is left is the interpreter's teardown (collecting asyncio's and aiohttp's
    objects and modules), about 35 ms measured, a tenth of a small copy. ``os._exit`` skips it
    once the output is flushed. (``python -m ociflow`` exits the ordinary way.)
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: nothing more can be said
        code = code or EXIT_ERROR
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used by the console script)."""
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help(sys.stderr)
        return EXIT_USAGE
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "copy":
            return _copy(args)
        if args.command == "bench":
            return _bench(args)
        from ociflow.cli_manage import manage

        return manage(args, _http_options(args))
    except KeyboardInterrupt:
        again = "" if getattr(args, "resume", True) is False else (
            "; run the same command again to continue"
        )
        print(f"ociflow: interrupted{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from ociflow.errors import CancelledTransferError, OciflowError

        if args.debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, CancelledTransferError):
            print(f"ociflow: {exc}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, OciflowError | ValueError):
            print(f"ociflow: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"ociflow: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _http_options(args: argparse.Namespace) -> HttpOptions:
    from dataclasses import replace

    from ociflow.http.retry import RetryPolicy
    from ociflow.http.transport import HttpOptions

    options = HttpOptions(
        plain_http=args.plain_http,
        insecure=args.insecure,
        retry=RetryPolicy.with_retries(args.retries, max_wait=args.retry_max_wait),
        stall_timeout=args.stall_timeout,
        auth_file=args.authfile,
        credentials=_sign_in(getattr(args, "creds", None), getattr(args, "azure", False), "-"),
    )
    transfer = {
        name: value
        for name in ("range_parallel", "chunk_size")
        if (value := getattr(args, name, None)) is not None
    }
    if "chunk_size" in transfer:
        # Asking for chunks of a size means wanting chunks for anything larger, also below
        # the default threshold (a proxy's body cap; an upload resumable after a crash).
        transfer["chunked_threshold"] = min(options.chunked_threshold, transfer["chunk_size"] + 1)
    return replace(options, **transfer) if transfer else options


def _one_side(options: HttpOptions, plain_http: bool, insecure: bool) -> HttpOptions | None:
    """``options`` with one side's own connection flags; None when it has none."""
    if not (plain_http or insecure):
        return None
    from dataclasses import replace

    return replace(options, plain_http=options.plain_http or plain_http,
                   insecure=options.insecure or insecure)


def _bench(args: argparse.Namespace) -> int:
    import asyncio

    from ociflow.bench import bench
    from ociflow.errors import InvalidReferenceError
    from ociflow.reference import RegistryReference, parse_reference

    ref = parse_reference(args.repository)
    if not isinstance(ref, RegistryReference):
        raise InvalidReferenceError(f"{args.repository}: bench needs a registry repository")
    result = asyncio.run(
        bench(ref, size=args.size, blobs=args.blobs, jobs=args.jobs, options=_http_options(args))
    )
    if args.json:
        print(json.dumps(result.to_json()))
    elif not args.quiet or result.left_behind:
        print(result.report())
    return 0


def _copy(args: argparse.Namespace) -> int:
    from ociflow.engine import copy_sync
    from ociflow.progress import Progress, TqdmProgress

    show_bars = not (args.quiet or args.json) and sys.stderr.isatty()
    progress: Progress = TqdmProgress() if show_bars else Progress()
    options = _http_options(args)
    result = copy_sync(
        args.src,
        args.dst,
        jobs=args.jobs,
        platform=args.platform,
        progress=progress,
        options=options,
        src_options=_one_side(options, args.src_plain_http, args.src_insecure),
        dst_options=_one_side(options, args.dest_plain_http, args.dest_insecure),
        resume=args.resume,
        src_credentials=_sign_in(args.src_creds, args.src_azure, "--src"),
        dst_credentials=_sign_in(args.dest_creds, args.dest_azure, "--dest"),
    )
    if args.json:
        print(json.dumps(result.to_json()))
    elif not args.quiet:
        print(
            f"Copied {result.source} -> {result.destination}\n"
            f"  {result.media_type} {result.digest}\n"
            f"  blobs: {result.blobs_copied} copied, {result.blobs_skipped} skipped, "
            f"{result.blobs_mounted} mounted; {_size(result.bytes_transferred)} transferred"
        )
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    raise AssertionError("unreachable")
