"""Demo mode: when a provider has no key, its kinds still work end to end on locally made results.

`DemoServer` speaks the small part of Replicate's and ElevenLabs' HTTP APIs the product uses, on
loopback, and the real SDK clients are pointed at it; the pipelines, journal, plans and ledger run
unchanged. What it answers is made here (media.py): an image showing the prompt, a short clip, a tone.
"""

from providers.demo.server import DemoServer

__all__ = ["DemoServer"]
