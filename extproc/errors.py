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

__all__ = ["CANNOT_START", "ClassifierError", "ConfigError", "PolicyError", "RouterError"]


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


class ConfigError(RouterError):
    """The configuration is invalid; ``problems`` lists every problem as ``field.path: message``.

    ``heading`` says what kind of problem: ``cannot start`` for a valid address that cannot be bound (another process
    holds it), so the operator looks for that process rather than at the YAML.
    """

    def __init__(self, problems: list[str], heading: str = "invalid configuration") -> None:
        self.problems = problems
        self.heading = heading
        super().__init__(f"{heading}:\n  " + "\n  ".join(problems))


CANNOT_START = "cannot start"
"""The :class:`ConfigError` heading of a listener that cannot bind."""


class ClassifierError(RouterError):
    """The classifier raised or missed its deadline."""


class PolicyError(RouterError):
    """No catalog model is eligible for the request."""
