"""The three roles and what each allows: read < readwrite < admin."""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    """A user's role; a higher role allows everything a lower one does."""

    READ = 1
    READWRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named `text` (read, readwrite, admin); ValueError names the choices."""
        try:
            return cls[str(text).strip().upper()]
        except KeyError:
            raise ValueError(f"role must be one of read, readwrite, admin, got {text!r}") from None

    def allows(self, needed: Role) -> bool:
        return self >= needed
