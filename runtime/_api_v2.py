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
from ._api_v1 import __getattr__ as __getattr__  # UNSET, for code generated for betterproto 2.0.0b7
from .calling.base import bidi as bidi
from .calling.base import client_stream as client_stream
from .calling.base import download as download
from .calling.base import server_stream as server_stream
from .calling.base import unary as unary
from .calling.stored import KvEntry as KvEntry
from .calling.stored import KvWatch as KvWatch
from .calling.stored import StoredBlob as StoredBlob
from .calling.stored import kv_get as kv_get
from .calling.stored import kv_history as kv_history
from .calling.stored import kv_purge as kv_purge
from .calling.stored import kv_watch as kv_watch
from .calling.stored import object_delete as object_delete
from .calling.stored import object_get as object_get
from .calling.stored import object_open as object_open
from .calling.pending import Pending as Pending
from .calling.pending import PendingStream as PendingStream
from .schema.spec import KeyField as KeyField
from .schema.spec import KeyKind as KeyKind
from .schema.spec import KeyTemplate as KeyTemplate
from .schema.spec import KvStoreSpec as KvStoreSpec
from .schema.spec import ObjectStoreSpec as ObjectStoreSpec
from .schema.spec import PersistPolicy as PersistPolicy
from .schema.spec import WriteMode as WriteMode

API_VERSION = 2
