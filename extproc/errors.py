"""Error hierarchy; each error maps to exactly one outcome at the stream boundary.

```
RouterError
  ConfigError        invalid configuration           -> refuse to start / keep the running config
  ClientBodyError    unreadable body / no model      -> pass through unchanged
  ClassifierError    model failure or deadline       -> fallback decision
  PolicyError        nothing eligible in catalog     -> fallback decision
```
A message kind the handler cannot answer ends the stream with a gRPC status (see ``stream.py``).
"""

from __future__ import annotations

__all__ = ["ClassifierError", "ConfigError", "PolicyError", "RouterError"]


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


class ConfigError(RouterError):
    """The configuration is invalid; ``problems`` lists every problem as ``field.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class ClassifierError(RouterError):
    """The classifier raised or missed its deadline."""


class PolicyError(RouterError):
    """No catalog model is eligible for the request."""
