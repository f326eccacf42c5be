"""The management commands of the CLI: ``catalog``, ``tags``, ``inspect``, ``delete``.

Each runs one :class:`~ociflow.manage.Registry` call and prints its answer: one name per line
(``--json``: a JSON list), a manifest as a JSON object (``--raw``: its exact bytes), or the
digest deleted. Errors are raised to :func:`ociflow.cli.main`, which prints them in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ociflow.errors import InvalidReferenceError
from ociflow.http.options import HttpOptions
from ociflow.manage import Registry, names_version
from ociflow.reference import RegistryReference, parse_reference


def manage(args: argparse.Namespace, options: HttpOptions) -> int:
    """Run the management command in ``args``; returns the exit code."""
    return asyncio.run(_run(args, options))


async def _run(args: argparse.Namespace, options: HttpOptions) -> int:
    if args.command == "catalog":
        async with Registry(args.registry, options=options) as registry:
            _print_names(await registry.repositories(page_size=args.page_size), args)
        return 0
    text = args.repository if args.command == "tags" else args.reference
    ref = _registry_reference(text)
    # The name on the registry, with a tag or digest only where the user wrote one: the
    # Registry calls say what each of them needs.
    name = ref.repository
    if names_version(text):
        name += f"@{ref.digest}" if ref.digest else f":{ref.tag}"
    async with Registry(ref.registry, options=options) as registry:
        if args.command == "tags":
            _print_names(await registry.tags(name, page_size=args.page_size), args)
        elif args.command == "inspect":
            desc, data = await registry.manifest(name)
            if args.raw:
                sys.stdout.buffer.write(data)
            else:
                print(json.dumps(_inspection(ref, desc.digest, desc.media_type, data), indent=2))
        else:
            digest = await registry.delete(name)
            if args.json:
                print(json.dumps({"reference": str(ref), "deleted": digest}))
            elif not args.quiet:
                print(f"Deleted {ref} ({digest})")
    return 0


def _registry_reference(text: str) -> RegistryReference:
    ref = parse_reference(text)
    if not isinstance(ref, RegistryReference):
        raise InvalidReferenceError(f"{text}: not a registry reference")
    return ref


def _print_names(names: list[str], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(names))
    elif not args.quiet or names:
        sys.stdout.write("".join(f"{name}\n" for name in names))


def _inspection(ref: RegistryReference, digest: str, media_type: str, data: bytes) -> Any:
    return {
        "reference": str(ref),
        "digest": digest,
        "mediaType": media_type,
        "size": len(data),
        "manifest": json.loads(data),
    }
