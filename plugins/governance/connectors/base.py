"""The connector contract: one abstract base per kind of system, and the registry.

Every connector owns its provider hook (the connection and the client) and answers ``test()``
as the UI's "Test connection" does. Processors (third parties over HTTP) have the full contract:

* ``lookup(identities)`` -> the records the processor holds for the person (resolve);
* ``export(record_id)`` -> ``{export name: [documents]}`` for one record;
* ``erase(record_id)`` -> ``"erased"`` or ``"absent"`` (already gone: erasure is idempotent, a
  retried erase is a no-op);
* ``verify(identities)`` -> the record ids the processor still returns (empty: verified);
* ``test()`` -> ``(ok, message)``.

Database and object-store systems are served by :class:`DatabaseConnector` and
:class:`ObjectStoreConnector`: the hook-backed connection and client the plan executors
(resolution, export, erasure, verification) run their statements and object calls on.

The escape hatch: a processor whose API the request templates cannot express (request bodies,
OAuth client credentials, asynchronous jobs to poll) declares ``connector: python`` and
``class: module:Class`` in the data map; the class subclasses :class:`ProcessorConnector`, is
checked when the map loads (placed error when it is missing or does not satisfy the contract) and
is built by :func:`processor_connector` exactly where the templated client would be, so export,
erasure and verification reach it through the same workflow path. See
``governance.connectors.support_desk`` for an example.

Nothing here imports Airflow: the data-map loader imports this module to check classes.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from governance.db import postgres_hook
from governance.lineage import record_processor_call
from governance.objectstore import s3_client

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from governance.datamap.model import Processor
    from governance.identity import SubjectIdentities

EraseOutcome = Literal["erased", "absent"]


class UnsupportedSystemKind(LookupError):
    pass


class ConnectorClassError(LookupError):
    """A data map names a connector class that cannot be used (message says why and what to do)."""


@dataclass(frozen=True)
class ProcessorRecord:
    """One record a processor holds for the person: its id and the look-up's JSON."""

    processor: str
    record_id: str
    document: Mapping[str, Any]

    def __repr__(self) -> str:  # the document holds personal data: never in logs or tracebacks
        return f"ProcessorRecord({self.processor}, {self.record_id})"


class Connector(ABC):
    """What every connector does: say whether its system is reachable with its connection."""

    kind: ClassVar[str]

    @abstractmethod
    def test(self) -> tuple[bool, str]:
        """``(True, message)`` when the system answers with the configured credentials; the message
        never holds a secret."""


class ProcessorConnector(Connector):
    """A third party holding personal data, reached over HTTP through its Airflow connection.

    Subclasses are built as ``cls(processor, connection=None, attempts=..., backoff_s=...)``:
    ``processor`` is the data-map entry (``connection_id``, ``lookup_by``), ``connection`` an
    explicit Airflow ``Connection`` (tests, benchmarks; None: look ``connection_id`` up), the rest
    retry settings a subclass may ignore. They must not log identities, URLs holding identities
    or response bodies.
    """

    kind: ClassVar[str] = "processor"

    processor: Processor

    @abstractmethod
    def lookup(self, identities: SubjectIdentities) -> list[ProcessorRecord]:
        """The person's records (deduplicated by id, sorted by id); identity kinds the processor
        cannot search by are skipped."""

    @abstractmethod
    def export(self, record_id: str) -> dict[str, list[Any]]:
        """Everything the processor holds in one record, by export name."""

    @abstractmethod
    def erase(self, record_id: str) -> EraseOutcome:
        """Erase one record, waiting until the processor has really deleted it; ``"absent"`` when
        it was gone already (a retry after success is a no-op)."""

    def report_lineage(self, base_url: str, *, changes: bool) -> None:
        """Name the processor as a dataset of the running task (``governance.lineage.processor_uri``:
        the connection's scheme, host and port, then the processor's name): read by a look-up or
        an export, written by an erasure. Once per connector and direction; call it before each
        request, so a task whose calls fail still names what it tried to reach."""
        reported: set[bool] = self.__dict__.setdefault("_lineage_reported", set())
        if changes not in reported:
            record_processor_call(base_url, self.processor.name, changes=changes)
            reported.add(changes)

    def verify(self, identities: SubjectIdentities) -> list[str]:
        """Record ids the processor still returns for the person (empty: erasure verified)."""
        return [record.record_id for record in self.lookup(identities)]

    def close(self) -> None:
        """Release sessions; the default holds none."""

    def __enter__(self) -> ProcessorConnector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class DatabaseConnector(Connector):
    """A PostgreSQL system (``kind: postgres``) through ``PostgresHook``: the plan executors open
    their connections with :meth:`conninfo` (the hook's libpq arguments, extras included)."""

    kind: ClassVar[str] = "postgres"

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id

    def hook(self) -> Any:
        return postgres_hook(self.connection_id)

    def conninfo(self) -> str:
        return str(self.hook().conninfo())

    def test(self) -> tuple[bool, str]:
        ok, message = self.hook().test_connection()
        return bool(ok), str(message)


class ObjectStoreConnector(Connector):
    """An S3 API (``kind: s3``) through ``S3Hook``: its client serves object reads and deletes."""

    kind: ClassVar[str] = "s3"

    def __init__(self, connection_id: str, bucket: str | None = None) -> None:
        self.connection_id = connection_id
        self.bucket = bucket

    def client(self) -> Any:
        return s3_client(self.connection_id)

    def test(self) -> tuple[bool, str]:
        """The bucket answers (when one is given) or the bucket list does, with the hook's client.
        (``S3Hook.test_connection`` calls STS, which MinIO and local servers do not serve.)"""
        try:
            client = self.client()
            if self.bucket:
                client.head_bucket(Bucket=self.bucket)
            else:
                client.list_buckets()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "S3 API reachable" + (f" (bucket {self.bucket})" if self.bucket else "")


# The registry: which class serves each system kind of the data map. A processor with
# ``connector: python`` names its own class instead.
CONNECTORS: dict[str, str] = {
    "postgres": "governance.connectors.base:DatabaseConnector",
    "s3": "governance.connectors.base:ObjectStoreConnector",
    "dynamodb": "governance.connectors.dynamodb:ItemStoreConnector",
    "http": "governance.connectors.processors:ProcessorClient",
}


def connector_class_path(kind: str) -> str:
    """``module:Class`` serving systems of ``kind``; UnsupportedSystemKind when there is none."""
    try:
        return CONNECTORS[kind]
    except KeyError:
        raise UnsupportedSystemKind(
            f"no connector for systems of kind {kind!r}: add one to governance.connectors.SYSTEM_KINDS"
        ) from None


_ABSTRACT = ("lookup", "export", "erase", "test")


def load_connector_class(path: str) -> type[ProcessorConnector]:
    """Import ``module:Class`` and check it satisfies the processor contract.

    ConnectorClassError says what is wrong: a module that does not import, a missing class, or a
    class that is not a ProcessorConnector or leaves part of the contract unimplemented.
    """
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ConnectorClassError(f"{path!r} is not module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConnectorClassError(f"module {module_name!r} does not import: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        names = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, ProcessorConnector))
        hint = f" (connector classes there: {', '.join(names)})" if names else ""
        raise ConnectorClassError(f"module {module_name!r} has no class {class_name!r}{hint}")
    if not inspect.isclass(cls) or not issubclass(cls, ProcessorConnector):
        raise ConnectorClassError(
            f"{path} is not a ProcessorConnector: subclass governance.connectors.base.ProcessorConnector "
            f"and implement {', '.join(_ABSTRACT)}"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConnectorClassError(f"{path} does not implement {', '.join(missing)} of the connector contract")
    return cls


def processor_connector(processor: Processor, connection: Connection | None = None, **options: Any) -> ProcessorConnector:
    """The connector for one processor of the map: its Python class (``connector: python``) or the
    request-template client. ``options`` are retry settings (``attempts``, ``backoff_s``)."""
    if processor.connector == "python":
        assert processor.class_path is not None, "the map validates that connector: python names its class"
        cls = load_connector_class(processor.class_path)
        return cls(processor, connection, **options)  # type: ignore[call-arg]
    from governance.connectors.processors import ProcessorClient

    return ProcessorClient(processor, connection, **options)
