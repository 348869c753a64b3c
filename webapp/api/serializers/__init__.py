"""JSON shapes of the API objects, one module per concept."""
