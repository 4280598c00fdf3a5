"""The phone's side: resolver, long-link and short-link connections, sessions."""
