"""Commands of the sync: schema apply, remote set, sync, status (filled in with the sync)."""
