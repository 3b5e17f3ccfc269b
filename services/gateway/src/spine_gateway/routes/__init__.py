"""HTTP routes: translate requests into service calls; no rules here."""
