"""Every kind's pipeline and preparer, from the modules of generation/kinds/."""

from __future__ import annotations

from generation.catalog import Kind
from generation.kinds import images, lora, speech, video
from generation.pipelines import Pipeline
from generation.registry_types import Checker, Preparer

PIPELINES: dict[Kind, Pipeline] = {
    **images.PIPELINES,
    **video.PIPELINES,
    **speech.PIPELINES,
    **lora.PIPELINES,
}
PREPARERS: dict[Kind, Preparer] = {**video.PREPARERS, **speech.PREPARERS, **lora.PREPARERS}
CHECKERS: dict[Kind, Checker] = {**lora.CHECKERS}
