"""The call after the accept: its sideband, its function calls and its end."""
