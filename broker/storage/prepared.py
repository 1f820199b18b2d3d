"""Statements of the per-request paths, compiled once and run on the driver's cursor.

Why not plain SQLAlchemy Core here: for a one-row statement, Core's execution layer
(a ``Connection`` per call, its transaction object, the compiled-cache lookup, parameter
construction, the ``Row`` result) costs several times what the database spends:
measured on SQLite, 0.13 ms of CPU to read a user by primary key through
``engine.connect()``, 0.03 ms through the pool's raw connection. The token endpoint runs
four such statements per redemption and userinfo two, so this was a fifth of their CPU.

What stays SQLAlchemy's: the statements are still Core expressions (one definition for
SQLite and PostgreSQL), compiled here by the engine's own dialect, with its bind and
result processors (JSON, booleans); connections still come from the engine's pool, with
its pre-ping and its rollback on return. Only the per-call machinery is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None


class Prepared:
    """One Core statement compiled for one dialect: its SQL text, how to order and
    convert its parameters, and how to convert the columns it returns."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # a statement, not DDL
        self.sql = compiled.string
        # The names the SQL text uses (an anonymous bind gets a generated one).
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        # Positional drivers (sqlite3: qmark) take a tuple in the statement's order;
        # named ones (psycopg: pyformat) a mapping.
        self._order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None
        )
        self._binds: dict[str, Processor] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in binds.items()
        }
        self._fixed = {name: bind.value for name, bind in binds.items() if not bind.required}
        columns = getattr(statement, "exported_columns", ())
        self.columns: tuple[str, ...] = tuple(c.key for c in columns)
        self._results: tuple[Processor, ...] = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        converted = {}
        for name, process in self._binds.items():
            value = values[name] if name in values else self._fixed.get(name)
            converted[name] = process(value) if process is not None else value
        if self._order is None:
            return converted
        return tuple(converted[name] for name in self._order)

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {
            name: process(value) if process is not None else value
            for name, value, process in zip(self.columns, raw, self._results, strict=True)
        }


class Cursor:
    """A driver cursor that runs Core statements, each compiled on its first use."""

    def __init__(self, cursor: Any, statements: Statements) -> None:
        self._cursor = cursor
        self._statements = statements

    def execute(self, statement: ClauseElement, values: Mapping[str, Any]) -> Prepared:
        prepared = self._statements[statement]
        self._cursor.execute(prepared.sql, prepared.parameters(values))
        return prepared

    def first(self, statement: ClauseElement, values: Mapping[str, Any]) -> dict[str, Any] | None:
        prepared = self.execute(statement, values)
        raw = self._cursor.fetchone()
        # Drain the rest: sqlite3 finishes an UPDATE ... RETURNING only once it is read.
        self._cursor.fetchall()
        return None if raw is None else prepared.row(raw)

    def scalar(self, statement: ClauseElement, values: Mapping[str, Any]) -> Any:
        self.execute(statement, values)
        raw = self._cursor.fetchone()
        self._cursor.fetchall()
        return None if raw is None else raw[0]


class Statements:
    """The prepared statements of one engine, compiled on first use."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._compiled: dict[int, tuple[ClauseElement, Prepared]] = {}

    def __getitem__(self, statement: ClauseElement) -> Prepared:
        # Keyed by identity (Core statements define no value equality); the entry keeps
        # the statement alive, so its id is never reused while it is here.
        entry = self._compiled.get(id(statement))
        if entry is None:
            entry = self._compiled[id(statement)] = (
                statement,
                Prepared(statement, self._engine.dialect),
            )
        return entry[1]

    @contextmanager
    def cursor(self, *, commit: bool) -> Iterator[Cursor]:
        """A pooled connection's cursor; ``commit`` commits when the block ends without error.

        Anything not committed is rolled back when the pool takes the connection back.
        Driver errors propagate unwrapped; the store turns them into StorageError.
        """
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                yield Cursor(cursor, self)
            finally:
                cursor.close()
            if commit:
                connection.commit()
        finally:
            connection.close()
