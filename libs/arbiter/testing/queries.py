"""Counting the queries a request runs, on every database: each service has its own alias, so a count taken
on one connection would miss an N+1 on another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connections
from django.test.utils import CaptureQueriesContext

WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclass
class Queries:
    """The statements run, by database alias (aliases that ran none are left out)."""

    by_alias: dict[str, list[str]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {alias: len(statements) for alias, statements in self.by_alias.items()}

    def writes(self, alias: str) -> list[str]:
        return [sql for sql in self.by_alias.get(alias, []) if sql.lstrip().upper().startswith(WRITES)]

    def listing(self) -> str:
        return "\n".join(
            f"[{alias}] {sql}" for alias, statements in self.by_alias.items() for sql in statements
        )


@contextmanager
def queries_captured() -> Iterator[Queries]:
    queries = Queries()
    with ExitStack() as stack:
        contexts = {
            alias: stack.enter_context(CaptureQueriesContext(connections[alias])) for alias in connections
        }
        yield queries
    queries.by_alias = {
        alias: [query["sql"] for query in context.captured_queries]
        for alias, context in contexts.items()
        if context.captured_queries
    }


def queries_of(call: Callable[[], Any]) -> tuple[Any, Queries]:
    """What `call` returned, and the queries it ran."""
    with queries_captured() as queries:
        result = call()
    return result, queries


def assert_same_query_counts(one: Queries, many: Queries) -> None:
    """A listing of many items runs as many queries, on every database, as a listing of one."""
    assert many.counts == one.counts, (
        f"the query count grows with the items: {one.counts} for one, {many.counts} for many\n"
        f"--- one:\n{one.listing()}\n--- many:\n{many.listing()}"
    )
