"""The ground floor of every recipe section: its base class and the field types they share.

Tasks (and, next, backbones and sources) define their own sections on this base and
register them; `recipe.py` assembles the whole document from those registries. Nothing here
imports another cnnlab module, so imports run one way and no circle can form.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

Activation = Literal["relu", "gelu", "silu", "mish", "leaky_relu"]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors (a typo must stop the run)."""

    model_config = ConfigDict(extra="forbid")


class HeadConfig(Section):
    """An MLP head on the backbone's pooled features."""

    hidden: list[PositiveInt] = [128]  # hidden layer sizes of the MLP head; [] = linear head
    dropout: float = Field(0.3, ge=0.0, lt=1.0)  # before every linear layer of the head
    activation: Activation = "relu"  # after every hidden layer
