"""chatd on Ray Serve: an ingress deployment that picks an engine replica per chat,
engine replicas that each run one whole chatd (model, engine, HTTP app), and the
launcher behind `chatd serve --replicas N`. Needs the `ray` extra."""
