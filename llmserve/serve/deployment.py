"""`@serve.deployment`, `@serve.ingress`, `Deployment.bind` and the application graph."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from llmserve.serve.config import DeploymentConfig
from llmserve.serve.exceptions import ConfigError

INGRESS_ATTR = "__llmserve_ingress_app__"
T = TypeVar("T")


@dataclass(frozen=True)
class Deployment:
    func_or_class: Any
    name: str
    config: DeploymentConfig = field(default_factory=DeploymentConfig)

    def options(self, *, name: str | None = None, **changes: Any) -> Deployment:
        """A copy with some options changed (same names as `@serve.deployment`)."""
        return Deployment(self.func_or_class, name or self.name, self.config.updated(**changes))

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        return Application(self, args, kwargs)

    @property
    def is_function(self) -> bool:
        return not inspect.isclass(self.func_or_class)

    @property
    def ingress_app(self) -> Any:
        return getattr(self.func_or_class, INGRESS_ATTR, None)


@dataclass(frozen=True)
class Application:
    """A deployment bound to its constructor arguments; arguments may be applications."""

    deployment: Deployment
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def walk(self) -> list[Application]:
        """Every application in the graph, dependencies before dependents, each once."""
        order: list[Application] = []
        seen: set[int] = set()

        def visit(node: Application) -> None:
            if id(node) in seen:
                return
            seen.add(id(node))
            for child in _children(node.args) + _children(tuple(node.kwargs.values())):
                visit(child)
            order.append(node)

        visit(self)
        names = [node.deployment.name for node in order]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"two different deployments in one app share the name(s) {duplicates}; "
                "give them distinct names with .options(name=...)"
            )
        return order


def _children(values: tuple[Any, ...]) -> list[Application]:
    found: list[Application] = []
    for value in values:
        if isinstance(value, Application):
            found.append(value)
        elif isinstance(value, list | tuple):
            found += _children(tuple(value))
        elif isinstance(value, dict):
            found += _children(tuple(value.values()))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += _children(tuple(getattr(value, f.name) for f in dataclasses.fields(value)))
    return found


def replace_applications(value: Any, convert: Callable[[Application], Any]) -> Any:
    """Replace every application in constructor arguments (nested in lists, tuples,
    dicts and dataclasses) by ``convert(app)``."""
    if isinstance(value, Application):
        return convert(value)
    if isinstance(value, list):
        return [replace_applications(v, convert) for v in value]
    if isinstance(value, tuple):
        return tuple(replace_applications(v, convert) for v in value)
    if isinstance(value, dict):
        return {k: replace_applications(v, convert) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: replace_applications(getattr(value, f.name), convert)
                   for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


@overload
def deployment(_func_or_class: T, *, name: str | None = None, **options: Any) -> Deployment: ...


@overload
def deployment(
    _func_or_class: None = None, *, name: str | None = None, **options: Any
) -> Callable[[Any], Deployment]: ...


def deployment(
    _func_or_class: Any = None, *, name: str | None = None, **options: Any
) -> Deployment | Callable[[Any], Deployment]:
    """Turn a class or function into a deployment (``@serve.deployment`` or with options)."""

    def wrap(target: Any) -> Deployment:
        if not (inspect.isclass(target) or callable(target)):
            raise ConfigError("@serve.deployment goes on a class or a function")
        config = DeploymentConfig().updated(**options)
        return Deployment(target, name or target.__name__, config)

    if _func_or_class is not None:
        return wrap(_func_or_class)
    return wrap


def ingress(app: Any) -> Callable[[type[T]], type[T]]:
    """Make a deployment class the HTTP ingress served by ``app`` (a FastAPI app)."""

    def wrap(cls: type[T]) -> type[T]:
        if not inspect.isclass(cls):
            raise ConfigError("@serve.ingress goes on a class")
        setattr(cls, INGRESS_ATTR, app)
        return cls

    return wrap
