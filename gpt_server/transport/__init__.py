"""How the gateway reaches workers besides HTTP: transports the launcher builds and injects."""
