"""Base of generated `<Service>NatsBase` classes."""

from __future__ import annotations

from typing import ClassVar

from ..core.errors import ErrorCode, RpcError
from .spec import ServiceSpec


class ServiceBase:
    """Subclass the generated `<Service>NatsBase` and override its methods; pass it to `serve()`."""

    _nats_service: ClassVar[ServiceSpec]

    def _nats_unimplemented(self, py_name: str) -> RpcError:
        spec = self._nats_service
        name = spec.full_name(spec.method(py_name))
        return RpcError(ErrorCode.UNIMPLEMENTED, f"{name} is not implemented", method=name)
