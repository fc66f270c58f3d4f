"""Commands that take generations in: import and watch (filled in with the importer)."""
