"""The per-process cache of published guardrail versions and trained router predictors: each version is
loaded once, the oldest goes first past the bound, and a deleted owner's versions are forgotten."""

from __future__ import annotations

from learning.caching import VersionCache


def test_a_cached_version_is_loaded_once() -> None:
    cache: VersionCache[str] = VersionCache(limit=4)
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        return "compiled"

    assert cache.get_or_load((1, 1), load) == "compiled"
    assert cache.get_or_load((1, 1), load) == "compiled"
    assert len(loads) == 1 and cache.get((1, 1)) == "compiled"


def test_past_the_bound_the_oldest_version_goes_first() -> None:
    cache: VersionCache[str] = VersionCache(limit=2)
    for version in (1, 2, 3):
        cache.get_or_load((7, version), lambda version=version: f"v{version}")
    assert [cache.get((7, version)) for version in (1, 2, 3)] == [None, "v2", "v3"]


def test_forgetting_an_owner_drops_only_its_versions() -> None:
    cache: VersionCache[str] = VersionCache(limit=8)
    for key in [(1, 1), (1, 2), (2, 1)]:
        cache.get_or_load(key, lambda: "value")
    cache.forget(1)
    assert (cache.get((1, 1)), cache.get((1, 2)), cache.get((2, 1))) == (None, None, "value")
