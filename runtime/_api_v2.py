"""The private API that generated code of version 2 imports as `_nats`.

Version 2 passes typed method descriptors (`MethodSpec[Req, Resp]`, one per method, declared in a
`<Service>NatsMethods` class) instead of method names, and its client methods return awaitables
(`Pending`, `PendingStream`, the stream calls) whose types are precise; persisted methods carry
their `(natsmicro.kv_store)` / `object_store` options in the descriptor and get client helpers
(`kv_get`, `object_get`, ...). Everything of version 1 is here too. `_api_v1` stays as it is, so
code generated for it keeps running.
"""

from __future__ import annotations

from typing import ClassVar as ClassVar
from typing import overload as overload

from ._api_v1 import *  # noqa: F401,F403  (version 2 is version 1 plus the names below)
from .client import Pending as Pending
from .client import PendingStream as PendingStream
from .client import bidi as bidi
from .client import client_stream as client_stream
from .client import download as download
from .client import server_stream as server_stream
from .client import unary as unary
from .spec import KeyField as KeyField
from .spec import KeyKind as KeyKind
from .spec import KeyTemplate as KeyTemplate
from .spec import KvStoreSpec as KvStoreSpec
from .spec import ObjectStoreSpec as ObjectStoreSpec
from .spec import PersistPolicy as PersistPolicy
from .spec import WriteMode as WriteMode
from .stored import KvEntry as KvEntry
from .stored import KvWatch as KvWatch
from .stored import StoredBlob as StoredBlob
from .stored import kv_get as kv_get
from .stored import kv_history as kv_history
from .stored import kv_purge as kv_purge
from .stored import kv_watch as kv_watch
from .stored import object_delete as object_delete
from .stored import object_get as object_get
from .stored import object_open as object_open

API_VERSION = 2
