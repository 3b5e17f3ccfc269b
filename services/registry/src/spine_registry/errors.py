"""The registry's errors."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's errors."""


class RegistrationRefused(RegistryError):
    """A ``RegisterAgent`` the catalogue does not accept; the message says why."""
