"""Named operator API keys with scopes (the bootstrap admin key has every scope)."""
