"""amorsize's own behaviour, registered as ordinary plugins (as pytest does)."""
