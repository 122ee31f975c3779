"""Registry of supported model families and their defaults."""
