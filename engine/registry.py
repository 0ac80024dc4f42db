"""A name -> class registry filled by a class decorator (the methods of each task use one)."""

from typing import Callable, Dict, List, TypeVar

from .config import require_choice

C = TypeVar("C", bound=type)


class Registry(Dict[str, type]):
    """``{name: class}``; ``@registry.register("name")`` adds a class and sets its ``name``."""

    def __init__(self, kind: str, key: str = "method"):
        super().__init__()
        self.kind = kind
        self.key = key  # the config key that names an entry

    def register(self, name: str) -> Callable[[C], C]:
        def add(cls: C) -> C:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name
            self[name] = cls
            return cls

        return add

    def names(self) -> List[str]:
        return sorted(self)

    def lookup(self, name: str) -> type:
        """The class registered as ``name``; a `ConfigError` naming the config key, the names there
        are and the closest one otherwise (so that config schemas need not import registries)."""
        require_choice(self.key, name, self.names())
        return self[name]
