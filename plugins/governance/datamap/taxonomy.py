"""The fideslang default taxonomy as plain look-up tables (data categories and data uses).

Importing fideslang's taxonomy costs about a second (it builds pydantic models for every entry),
so it is loaded lazily, once per process, and flattened into frozen dataclasses that the rest of
the package can use without touching fideslang's types.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Literal

TaxonomyKind = Literal["data category", "data use"]


@dataclass(frozen=True)
class TaxonomyEntry:
    """One fideslang data category or data use."""

    key: str
    name: str
    description: str
    parent_key: str | None
    replaced_by: str | None = None
    deprecated: bool = False


@dataclass(frozen=True)
class Taxonomy:
    """Data categories and data uses, keyed by their fideslang key."""

    data_categories: Mapping[str, TaxonomyEntry]
    data_uses: Mapping[str, TaxonomyEntry]

    def entries(self, kind: TaxonomyKind) -> Mapping[str, TaxonomyEntry]:
        return self.data_categories if kind == "data category" else self.data_uses


def _flatten(items: Iterable[object]) -> Mapping[str, TaxonomyEntry]:
    out: dict[str, TaxonomyEntry] = {}
    for item in items:
        key = str(getattr(item, "fides_key"))  # noqa: B009 - fideslang models, typed loosely here
        out[key] = TaxonomyEntry(
            key=key,
            name=str(getattr(item, "name", None) or key),
            description=str(getattr(item, "description", None) or ""),
            parent_key=getattr(item, "parent_key", None),
            replaced_by=getattr(item, "replaced_by", None),
            deprecated=bool(getattr(item, "version_deprecated", None)),
        )
    return MappingProxyType(out)


@lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    """The fideslang default taxonomy (loaded on first call, then cached for the process)."""
    from fideslang.default_taxonomy import DEFAULT_TAXONOMY

    return Taxonomy(
        data_categories=_flatten(DEFAULT_TAXONOMY.data_category),
        data_uses=_flatten(DEFAULT_TAXONOMY.data_use),
    )


def suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    candidates = list(known)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        # Dotted keys: a misspelt leaf often matches better on its last segment.
        leaf = name.rsplit(".", 1)[-1]
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        close = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def taxonomy_problem(key: str, kind: TaxonomyKind) -> str | None:
    """Why ``key`` is not a usable ``kind`` of the default taxonomy, or None when it is."""
    entries = default_taxonomy().entries(kind)
    entry = entries.get(key)
    if entry is None:
        return f"unknown fideslang {kind} {key!r}{suggest(key, entries)}"
    if entry.deprecated:
        instead = f"; use {entry.replaced_by!r}" if entry.replaced_by else ""
        return f"fideslang {kind} {key!r} is deprecated{instead}"
    return None


def data_category(key: str) -> TaxonomyEntry:
    """The data category ``key``; KeyError if the default taxonomy has none."""
    return default_taxonomy().data_categories[key]


def data_use(key: str) -> TaxonomyEntry:
    """The data use ``key``; KeyError if the default taxonomy has none."""
    return default_taxonomy().data_uses[key]


def lineage(key: str, kind: TaxonomyKind) -> list[TaxonomyEntry]:
    """``key`` and its ancestors, most specific first (``user.contact.email``, ``user.contact``,
    ``user``); unknown keys give an empty list."""
    entries = default_taxonomy().entries(kind)
    chain: list[TaxonomyEntry] = []
    current = entries.get(key)
    while current is not None:
        chain.append(current)
        current = entries.get(current.parent_key) if current.parent_key else None
    return chain


def is_within(key: str, ancestor: str) -> bool:
    """True when ``key`` is ``ancestor`` or below it in the hierarchy (by key, no look-up)."""
    return key == ancestor or key.startswith(ancestor + ".")


@dataclass(frozen=True)
class FieldPurpose:
    """What a field holds and why, in the taxonomy's own words: for export bundles and
    inventories telling a person why each item is held."""

    data_category: str
    category_name: str
    data_use: str
    use_name: str
    use_description: str


def describe(data_category_key: str, data_use_key: str) -> FieldPurpose:
    """Human names of a (validated) data category and data use."""
    category = default_taxonomy().data_categories.get(data_category_key)
    use = default_taxonomy().data_uses.get(data_use_key)
    return FieldPurpose(
        data_category=data_category_key,
        category_name=category.name if category else data_category_key,
        data_use=data_use_key,
        use_name=use.name if use else data_use_key,
        use_description=use.description if use else "",
    )
