"""Reading ``WWW-Authenticate`` challenges and the scopes a registry request needs.

Challenges (protocol.md §3.2, RFC 7235): several headers may arrive, each a scheme then
comma-separated ``key=value`` parameters whose values are tokens or quoted strings with
backslash escapes; a quoted value may hold commas (``scope="repository:a:pull,push"``). Keys are
compared case-insensitively.

Scopes (protocol.md §3.5): ``type:name:action[,action]``, several separated by spaces; a name may
hold a ``host:port`` colon, so a scope is split at its first and last colons only. A scope is kept
here as a set of *atoms*, one ``(type, name, action)`` each, so that "does this token cover that
request" is a subset test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from yarl import URL

Atom = tuple[str, str, str]
"""One permission: (resource type, resource name, action)."""

_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Where a request's repository name ends: the route that follows it (distribution-spec
# endpoints). The name is matched greedily, so a repository whose path holds "blobs" still
# splits at its last route.
_ROUTE = re.compile(
    r"^/v2/(?P<name>.+)/(?:manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list"
    r"|referrers/[^/]+)$"
)
_ACTIONS_BY_METHOD = {
    "GET": ("pull",),
    "HEAD": ("pull",),
    "POST": ("pull", "push"),
    "PUT": ("pull", "push"),
    "PATCH": ("pull", "push"),
    "DELETE": ("delete",),
}


@dataclass(frozen=True)
class Challenge:
    """One challenge: ``scheme`` lower-cased (``"bearer"``, ``"basic"``), ``params`` with
    lower-cased keys."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope_atoms(self) -> frozenset[Atom]:
        return parse_scopes(self.params.get("scope", ""))

    @property
    def error(self) -> str:
        return self.params.get("error", "")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values; malformed parts are
    skipped, never raised on."""
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(_parse_value(value))
    return challenges


def _parse_value(text: str) -> list[Challenge]:
    """One header value, which may hold several challenges (``Basic realm="x", Bearer ...``)."""
    out: list[Challenge] = []
    i, n = 0, len(text)
    current: Challenge | None = None
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        match = _TOKEN_CHARS.match(text, i)
        if match is None:
            i += 1  # a stray character: skip it
            continue
        word, i = match.group(0), match.end()
        j = i
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "=" and current is not None:
            value, i = _param_value(text, j + 1)
            current.params.setdefault(word.lower(), value)
            continue
        if j < n and text[j] == "=":
            # A parameter before any scheme (or token68 "=" padding): nothing to attach it to.
            _, i = _param_value(text, j + 1)
            continue
        current = Challenge(word.lower())
        out.append(current)
    return out


def _param_value(text: str, i: int) -> tuple[str, int]:
    """The value starting at ``i`` (after ``=``): a quoted string or a token; and where the
    parse continues."""
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == '"':
        i += 1
        chars: list[str] = []
        while i < n and text[i] != '"':
            if text[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(text[i])
            i += 1
        return "".join(chars), i + 1
    j = i
    while j < n and text[j] not in ", \t":
        j += 1
    return text[i:j], j


def parse_scopes(text: str) -> frozenset[Atom]:
    """The atoms of a space-separated scope string; malformed scopes are skipped."""
    atoms: set[Atom] = set()
    for scope in text.split():
        kind, sep, rest = scope.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not (kind and sep and sep2 and name):
            continue
        kind = kind.split("(", 1)[0]  # "repository(plugin)": the class is deprecated, ignored
        atoms.update((kind, name, action) for action in actions.split(",") if action)
    return frozenset(atoms)


def format_scopes(atoms: Iterable[Atom]) -> list[str]:
    """Scope strings for a token request, one per resource, actions sorted and joined."""
    by_resource: dict[tuple[str, str], set[str]] = {}
    for kind, name, action in atoms:
        by_resource.setdefault((kind, name), set()).add(action)
    return [
        f"{kind}:{name}:{','.join(sorted(actions))}"
        for (kind, name), actions in sorted(by_resource.items())
    ]


def request_scopes(method: str, url: URL) -> frozenset[Atom]:
    """The atoms a registry request needs, as distribution grants them: pull for reads,
    pull+push for writes, delete for deletes, pull on the source of a cross-repository mount,
    ``registry:catalog:*`` for the catalog; none for ``/v2/`` or a path it does not know."""
    path = url.path
    if path == "/v2/_catalog":
        return frozenset({("registry", "catalog", "*")})
    match = _ROUTE.match(path)
    actions = _ACTIONS_BY_METHOD.get(method.upper())
    if match is None or actions is None:
        return frozenset()
    name = match.group("name")
    atoms = {("repository", name, action) for action in actions}
    source = url.query.get("from")
    if method.upper() == "POST" and "mount" in url.query and source:
        atoms.add(("repository", source, "pull"))
    return frozenset(atoms)
