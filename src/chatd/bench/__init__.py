"""Load generation against any OpenAI-compatible server (`chatd bench`)."""
