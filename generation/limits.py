"""The concurrency limits both plans keep: generations in flight per user, per provider and overall,
and provider creates per minute. One description of the slots a generation takes, so Plan A's Redis
limiter (jobs/limits.py) and Plan B's in-process one (fallback/inline.py) name and size them alike
(and the status message can say which one a generation waits for: generation/progress.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from settings import Settings


@dataclass(frozen=True)
class Limits:
    per_user: int
    per_provider: dict[str, int]
    overall: int
    creates_per_minute: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            per_user=settings.limit_per_user,
            per_provider=settings.provider_limits,
            overall=settings.limit_overall,
            creates_per_minute={"replicate": settings.replicate_creates_per_minute},
        )

    def slots(self, user_id: int, provider: str) -> list[tuple[str, int]]:
        """The slots a generation of this user on this provider holds while in flight: (name, size)."""
        slots = [(f"user:{user_id}", self.per_user), ("global", self.overall)]
        if provider in self.per_provider:
            slots.append((f"provider:{provider}", self.per_provider[provider]))
        return slots

    def size_of(self, slot: str) -> int | None:
        """The size of a slot named as `slots` names it ("user:7", "global", "provider:replicate")."""
        scope, _, name = slot.partition(":")
        if scope == "user":
            return self.per_user
        if scope == "global":
            return self.overall
        if scope == "provider":
            return self.per_provider.get(name)
        return None
