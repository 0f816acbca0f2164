"""The KD loss library: one small module per loss family, all in the `LOSSES` registry.

Every loss is `forward(student, teacher, *, temperature, targets) -> scalar`, computed in fp32:

| name      | compares            | paper                                  |
|-----------|---------------------|----------------------------------------|
| kl        | logits (softmax)    | Hinton et al. 2015                     |
| bce_kd    | logits (sigmoid)    | sigmoid/Bernoulli form of Hinton KD    |
| mse, l1   | outputs             | regression KD                          |
| dkd       | logits (multiclass) | Zhao et al. 2022                       |
| fitnet    | features (adapted)  | Romero et al. 2015                     |
| attention | features            | Zagoruyko & Komodakis 2017             |
| rkd       | features or outputs | Park et al. 2019                       |
| sp        | features or outputs | Tung & Mori 2019                       |

A new loss is one new file with `@LOSSES.register("name")` on a `KDLoss` subclass, imported here.
"""

from compress.distill.losses import dkd, feature, logit, relation  # noqa: F401  (registers the losses)
from compress.distill.losses.base import LOSSES, KDLoss, build_loss

__all__ = ["LOSSES", "KDLoss", "build_loss"]
