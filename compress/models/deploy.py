"""The deployed form of a model: re-parameterisable blocks fused, as timm's `reparameterize_model` does.

MobileOne, RepViT, FastViT, RepGhostNet and the like train with parallel branches (conv + 1x1 +
identity, each with its BatchNorm) that fold into one convolution for inference. Quantizing and
exporting the training form ships the slow, multi-branch graph, and int8 then rounds each branch
separately. `deploy_form` returns a fused copy (the original is left as it is) or the model itself
when nothing in it can be fused, with the number of fused blocks for the stage's records.
"""

from __future__ import annotations

from torch import nn

FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")
"""The methods timm's re-parameterisable blocks expose (timm.models._manipulate.reparameterize_model)."""


DEPLOYED = "_kdtool_deploy_form"
"""Set on a model `deploy_form` fused: fusing it again is a no-op."""


def fusable_blocks(model: nn.Module) -> int:
    """How many sub-modules (the model included) have a fuse/re-parameterize method (0 once fused)."""
    if getattr(model, DEPLOYED, False):
        return 0
    return sum(1 for m in model.modules() if any(callable(getattr(m, f, None)) for f in FUSE_METHODS))


def deploy_form(model: nn.Module) -> tuple[nn.Module, int]:
    """(`model` with its re-parameterisable blocks fused, in eval mode, how many blocks there were).

    Fused on a deep copy with `timm.utils.reparameterize_model`; `model` itself when none is found
    or it is already fused. The fused blocks keep their methods, and some cannot run them twice
    (FastViT's `RepMixer.reparameterize` deletes `mixer`, then reads it: "'RepMixer' object has no
    attribute 'mixer'" when the export sweep fused a model and handed it to `export_model`, which
    fuses again; kdtool's stages each load a fresh student, so `kdtool run` did not meet it).
    """
    count = fusable_blocks(model)
    if not count:
        return model, 0
    from timm.utils import reparameterize_model

    training = model.training
    fused = reparameterize_model(model.eval())
    model.train(training)
    setattr(fused, DEPLOYED, True)
    return fused.eval(), count
