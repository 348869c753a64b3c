"""API views, one module per concept. Thin: parse, authorize, call an action, serialize."""
