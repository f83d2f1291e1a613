"""Every kind's spec (generation/kinds/), by kind: the one table the core looks a kind up in."""

from __future__ import annotations

from generation.catalog import Kind
from generation.kinds import images, lora, speech, video
from generation.kinds.spec import KindSpec

SPECS: dict[Kind, KindSpec] = {
    spec.kind: spec for module in (images, video, speech, lora) for spec in module.SPECS
}


def spec_of(kind: Kind) -> KindSpec | None:
    return SPECS.get(kind)
