"""infinity backend: relays to infinity_emb's own server started from a separate interpreter."""
