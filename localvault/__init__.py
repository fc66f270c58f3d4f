"""localvault."""
