"""The inference service: Deployments, classify APIs (native, OpenAI- and Mistral-compatible), playground, usage events."""
