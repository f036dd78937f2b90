"""Every way to make a distilled set: the registered distillation methods (registry.py, each run by the one loop in
loop.py; each in a folder of its own, registered when imported: trajectory matching in matching/), the coresets
(coresets.py) and EDGE's generative pipeline (edge/)."""
import importlib
import pkgutil

from evaluation.report import Reference
from methods import coresets
from methods.coresets import CORESETS
from methods.edge import EDGE
from methods.registry import REGISTRY, method_keys  # noqa: F401

for _package in pkgutil.iter_modules(__path__):  # a method's folder registers its methods when imported
    if _package.ispkg:
        importlib.import_module(f"{__name__}.{_package.name}")


def method_order():
    """Every method name in the order of the results tables: coresets, the registered methods, EDGE."""
    return (*CORESETS, *REGISTRY, EDGE)


def reference():
    """The results renderer's view of the methods (evaluation.report.Reference): table order, published numbers."""
    published = [(name, protocol, numbers) for name, (protocol, numbers) in coresets.PUBLISHED.items()]
    published += [(name, spec.published_protocol, spec.published) for name, spec in REGISTRY.items() if spec.published]
    return Reference.of(method_order(), published)
