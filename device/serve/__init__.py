"""`ferlite serve`: a read-only local dashboard over a results log."""
