"""`chatd chat`: talk to a model in the terminal.

In-process on the bundled (or ``--model``) model, with the same engine and chat layer
as the server but no port; or over HTTP to any OpenAI-compatible server
(``--base-url``). Interactive on a terminal (``repl``), one message in and only the
answer out when stdin is a pipe (``pipe``).
"""
