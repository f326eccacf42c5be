"""Verified blob streams: hash while streaming, refuse to deliver the last chunk of bad content.

Hashing runs in a worker thread (``hashlib`` releases the GIL on large buffers), overlapped with
whatever the consumer does with the chunk and with the next network read, so on two cores
verification costs little wall time. Memory: at most two chunks per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from ociflow.descriptor import Descriptor
from ociflow.digest import Verifier
from ociflow.errors import DigestMismatchError

INLINE_HASH_BYTES = 64 * 1024
"""A final chunk this small is hashed on the event loop (tens of microseconds)."""


async def verified(
    chunks: AsyncGenerator[bytes, None],
    desc: Descriptor,
    on_bytes: Callable[[int], None] | None = None,
    what: str = "blob",
    verifier: Verifier | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield ``chunks`` unchanged, checking them against ``desc``.

    Raises :class:`DigestMismatchError` before yielding the chunk that completes the expected
    size if the digest is wrong, when the source ends short, or when it sends more than
    ``desc.size`` bytes. ``on_bytes`` is told of every chunk delivered (for progress).

    ``verifier``, when given, has already consumed the blob's first ``verifier.received``
    bytes (a resumed download): ``chunks`` are the rest, and the whole blob is checked once.
    """
    if verifier is None:
        verifier = Verifier(desc.digest, desc.size, f"{what} {desc.media_type}")
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    finished = False
    async with aclosing(chunks):
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if pending is not None:
                    await pending
                    pending = None
                if verifier.received + len(chunk) >= desc.size:
                    # The last chunk (or an overrun): verify fully before letting it out. A
                    # small one is hashed right here: cheaper than a thread hop.
                    if len(chunk) <= INLINE_HASH_BYTES:
                        _finish(verifier, chunk)
                    else:
                        await loop.run_in_executor(None, _finish, verifier, chunk)
                    finished = True
                    if on_bytes:
                        on_bytes(len(chunk))
                    yield chunk
                    continue
                pending = loop.run_in_executor(None, verifier.update, chunk)
                if on_bytes:
                    on_bytes(len(chunk))
                yield chunk
            if pending is not None:
                await pending
                pending = None
        finally:
            if pending is not None:
                # Never leave a hashing thread running past the stream's life.
                await asyncio.shield(pending)
    if not finished:
        # Empty, short, or nothing left after a resume that already had every byte: the
        # digest has not been checked yet.
        verifier.verify()


def _finish(verifier: Verifier, chunk: bytes) -> None:
    verifier.update(chunk)
    verifier.verify()


async def drain(stream: AsyncGenerator[bytes, None]) -> None:
    """Consume a stream to its end (verifying it, if it is a verified stream)."""
    async with aclosing(stream):
        async for _ in stream:
            pass


__all__ = ["DigestMismatchError", "drain", "verified"]
