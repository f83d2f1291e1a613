"""One module per family of kinds; each exports PIPELINES (and PREPARERS where a kind needs the
user's stored state before it is charged). generation/registry.py merges them."""
