"""Users, hashed API keys and credits."""
