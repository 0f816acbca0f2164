"""A recipe's registered names checked against the registries, right after loading.

The schema (`recipes.schema`) imports nothing of ours, so it keeps data sources, KD losses and
export formats as plain strings; this module, the highest layer that sees every registry, checks
them before any stage runs: a wrong name fails in a second with exit code 2 and the known names,
not after training. A new source, loss or format is known here the moment it registers.
"""

from __future__ import annotations

from compress.core.errors import KdtoolError
from compress.core.registry import Registry
from compress.distill.objective import NO_SOFT_LOSS
from recipes.schema import Recipe


def registries() -> dict[str, Registry]:
    """The registries recipe names are checked against, every entry registered (by importing its modules)."""
    import compress.data.files  # noqa: F401  (registers imagefolder/csv/audiofolder)
    import compress.data.loader  # noqa: F401  (registers digits)
    import compress.data.synthetic  # noqa: F401  (registers synthetic_images/synthetic_audio)
    import export.formats  # noqa: F401  (registers every exporter and runtime)
    from compress.data.registry import DATA_SOURCES
    from compress.distill.losses import LOSSES
    from export.registry import EXPORTERS
    from export.runtime import RUNTIMES

    return {"data source": DATA_SOURCES, "KD loss": LOSSES, "format": EXPORTERS, "runtime": RUNTIMES}


def check_names(recipe: Recipe) -> None:
    """Raise a one-line `KdtoolError` (exit 2) naming the key, its value and the known names.

    Checked: `data.source`, `distill.soft_loss` (or `none`), `distill.terms[i].name`, `export.formats`.
    """
    reg = registries()
    wanted = [("data.source", recipe.data.source, reg["data source"])]
    if recipe.distill.soft_loss not in (None, NO_SOFT_LOSS):
        wanted.append(("distill.soft_loss", recipe.distill.soft_loss, reg["KD loss"]))
    wanted += [(f"distill.terms[{i}].name", t.name, reg["KD loss"]) for i, t in enumerate(recipe.distill.terms)]
    wanted += [(f"export.formats[{i}]", f, reg["format"]) for i, f in enumerate(recipe.export.formats or [])]
    for key, value, registry in wanted:
        if value not in registry:
            try:
                registry.get(value)
            except KdtoolError as e:
                raise KdtoolError(f"{key}: unknown {registry.kind} {value!r}", e.hint) from None
