"""Our own gRPC API (``proto/model_router/v1``), generated code; regenerate with ``python -m extproc.api.generate``."""

__all__: list[str] = []
