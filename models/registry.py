"""Every model by short name, filled by the ``@register`` decorator in each model file.

This module imports no model (so a model file can import it without a cycle); importing
``recsys.models`` imports every model module of the package, which is what fills
:data:`MODELS`. Adding a model is one file::

    from .registry import register

    @register
    class MyModel(RankingModel): ...

Configs may then name ``MyModel`` or its full class path.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Type, Union, overload

from torch import nn

from .base import RankingModel, RetrievalModel

FAMILIES = {"ranking": RankingModel, "retrieval": RetrievalModel}

#: short name → model class (ranking and retrieval families alike)
MODELS: Dict[str, Type[nn.Module]] = {}


def family(cls: type) -> str:
    """"ranking" or "retrieval" for a model class; TypeError for anything else."""
    for name, base in FAMILIES.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return name
    raise TypeError(f"{getattr(cls, '__name__', cls)!r} is neither a RankingModel nor a RetrievalModel subclass")


@overload
def register(cls: type) -> type: ...


@overload
def register(*, name: Optional[str] = None) -> Callable[[type], type]: ...


def register(cls: Optional[type] = None, *, name: Optional[str] = None) -> Union[type, Callable[[type], type]]:
    """Class decorator: ``@register`` (short name = class name) or ``@register(name="X")``.

    A second class under a taken name is an error (two files claiming one config name);
    re-registering the same class (module reloaded) is allowed.
    """
    def add(model: type) -> type:
        family(model)
        key = name or model.__name__
        other = MODELS.get(key)
        if other is not None and (other.__module__, other.__qualname__) != (model.__module__, model.__qualname__):
            raise ValueError(f"model name {key!r} is already registered by {other.__module__}.{other.__qualname__}")
        MODELS[key] = model
        return model

    return add if cls is None else add(cls)


def of_family(kind: str) -> Dict[str, Type[nn.Module]]:
    """The registered models of one family ("ranking" | "retrieval")."""
    if kind not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {kind!r}")
    return {key: cls for key, cls in MODELS.items() if issubclass(cls, FAMILIES[kind])}
