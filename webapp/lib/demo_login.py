"""The demo login `make run` creates once (no Django imports: the launcher prints it)."""

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-studio-2026"
DEMO_MODEL_NAME = "tiny-llama-demo"
