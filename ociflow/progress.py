"""Progress events from the copy engine, and sinks for them (tqdm bars, callbacks).

The engine reports through a :class:`Progress`; every method has a no-op default so a sink
overrides only what it shows. Events carry descriptors (digests and sizes), never URLs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Literal

from ociflow.descriptor import Descriptor

if TYPE_CHECKING:
    from tqdm import tqdm

Outcome = Literal["copied", "skipped", "mounted"]


class Progress:
    """Receives copy events. Subclass and override what you need."""

    def start(self, total_bytes: int | None) -> None:
        """The copy starts; ``total_bytes`` is unknown (None) until the graph is walked."""

    def blob_started(self, desc: Descriptor) -> None:
        """A blob transfer starts."""

    def blob_bytes(self, desc: Descriptor, count: int) -> None:
        """``count`` more verified bytes of ``desc`` went through."""

    def blob_done(self, desc: Descriptor, outcome: Outcome) -> None:
        """A blob is at the destination: copied, found already there, or mounted."""

    def finish(self) -> None:
        """The copy ended (successfully or not)."""


class TqdmProgress(Progress):
    """A total bar plus one bar per blob in flight, on stderr."""

    def __init__(self, file: Any = None) -> None:
        self._file = file or sys.stderr
        self._total: tqdm | None = None
        self._bars: dict[str, tqdm] = {}

    def _bar(self, **kwargs: Any) -> tqdm:
        from tqdm import tqdm

        return tqdm(file=self._file, unit="B", unit_scale=True, unit_divisor=1024,
                    dynamic_ncols=True, **kwargs)

    def start(self, total_bytes: int | None) -> None:
        self._total = self._bar(desc="total", total=total_bytes, position=0)

    def blob_started(self, desc: Descriptor) -> None:
        if desc.size >= 1024 * 1024:
            self._bars[desc.digest] = self._bar(
                desc=desc.digest.encoded[:12], total=desc.size, leave=False
            )

    def blob_bytes(self, desc: Descriptor, count: int) -> None:
        bar = self._bars.get(desc.digest)
        if bar is not None:
            bar.update(count)
        if self._total is not None:
            self._total.update(count)

    def blob_done(self, desc: Descriptor, outcome: Outcome) -> None:
        bar = self._bars.pop(desc.digest, None)
        if bar is not None:
            bar.close()
        if outcome != "copied" and self._total is not None:
            # Skipped and mounted blobs count as done without passing through.
            self._total.update(desc.size)

    def finish(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        if self._total is not None:
            self._total.close()
