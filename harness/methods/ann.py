"""ann — the trained network itself, metered like any SNN: every comparison's baseline row."""

from __future__ import annotations

from ..api import Method, Preparation


class Ann(Method):
    name = "ann"
    spiking = False
    default_model = "cnn7"

    def prepare(self, ctx, ann, params):
        return Preparation(ann)
