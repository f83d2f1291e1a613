"""(filled in by its feature)"""

from __future__ import annotations

from generation.catalog import Kind
from generation.pipelines import Pipeline
from generation.registry_types import Preparer

PIPELINES: dict[Kind, Pipeline] = {}
PREPARERS: dict[Kind, Preparer] = {}
