"""A name -> class registry filled by a class decorator (the methods of each task use one)."""
from typing import Callable, Dict, List, TypeVar

C = TypeVar("C", bound=type)


class Registry(Dict[str, type]):
    """``{name: class}``; ``@registry.register("name")`` adds a class and sets its ``name``."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

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
